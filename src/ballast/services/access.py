"""Users, role bindings and API tokens.

Tokens are 256-bit random strings shown once; only their SHA-256 is stored
(a fast hash is right here: the secret has full entropy, unlike a password).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast.core.authz import COMPONENT_ROLES, Binding, Role
from ballast.core.identity import JoinGrant
from ballast.core.digests import digest
from ballast.core.maker_checker import GrantedBinding
from ballast.errors import Conflict, FieldProblem, Forbidden, InvalidInput, NotFound, Unauthenticated
from ballast.store.engine import ACCESS, Store, Tx
from ballast.store.schema import join_tokens, role_bindings, tokens, users

TOKEN_PREFIX = "blt_"
JOIN_TOKEN_PREFIX = "bjt_"   # a one-time join token (services/joining.py): it may do nothing but join
USER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.@]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Principal:
    user: str
    token_id: str
    bindings: tuple[Binding, ...]
    expires_at: float | None = None     # when the token this principal authenticated with expires
    join: JoinGrant | None = None       # a join token's holder: it may join one component, nothing else


DEFAULT_MAX_TOKEN_SECONDS = 90 * 86400


@dataclass(frozen=True)
class TokenPolicy:
    """How long a token may live: at most `max_seconds` (None: no limit), and never longer than the token that
    mints it. Only the bootstrap admin's first token is exempt (it is how the platform is first reached)."""

    max_seconds: float | None = DEFAULT_MAX_TOKEN_SECONDS

    def expiry(self, now: float, requested_seconds: float | None, minted_by: Principal) -> float | None:
        """When a new token expires; InvalidInput naming `ttlSeconds` when it would outlive what is allowed."""
        limits = []
        if self.max_seconds is not None:
            limits.append((now + self.max_seconds, f"at most {self.max_seconds:g} seconds, the platform's longest "
                                                   "token lifetime"))
        if minted_by.expires_at is not None:
            left = max(0.0, minted_by.expires_at - now)
            limits.append((minted_by.expires_at, f"at most {left:.0f} seconds: a token may not outlive the token "
                                                 f"that mints it ({minted_by.token_id})"))
        if requested_seconds is None:
            return min((at for at, _ in limits), default=None)
        wanted = now + requested_seconds
        for at, why in limits:
            if wanted > at:
                raise InvalidInput("token lifetime too long; no token was created",
                                   problems=[FieldProblem("ttlSeconds", requested_seconds, why)])
        return wanted


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# A known token's principal is reused for a few seconds, as long as no user, binding or token changed in this
# process (every such change invalidates at once); changes made through another replica take effect within it.
PRINCIPAL_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class _Cached:
    principal: Principal
    access_stamp: int
    at: float
    expires_at: float | None


async def authenticate(store: Store, token: str | None, now: float) -> Principal:
    if not token:
        raise Unauthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
    key = hash_token(token)
    cache: dict[str, _Cached] = store.memo.setdefault("principals", {})
    stamp = store.topic_stamp(ACCESS)
    hit = cache.get(key)
    if (hit is not None and hit.access_stamp == stamp and 0 <= now - hit.at < PRINCIPAL_CACHE_SECONDS
            and (hit.expires_at is None or hit.expires_at > now)):
        return hit.principal
    async with store.read() as conn:
        if token.startswith(JOIN_TOKEN_PREFIX):
            return await _join_principal(conn, token, now)   # never cached: it is good for one use
        row = (await conn.execute(select(tokens).where(tokens.c.hash == key))).first()
        if row is None:
            raise Unauthenticated("unknown API token")
        if row.revoked_at is not None:
            raise Unauthenticated(f"API token {row.id} was revoked")
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthenticated(f"API token {row.id} has expired")
        principal = Principal(user=row.user, token_id=row.id, bindings=await bindings_of(conn, row.user),
                              expires_at=row.expires_at)
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = _Cached(principal, stamp, now, row.expires_at)
    return principal


async def _join_principal(conn: AsyncConnection, token: str, now: float) -> Principal:
    """The principal of a join token: it may do nothing but join (no bindings); 401 when unknown, used or expired."""
    row = (await conn.execute(select(join_tokens).where(join_tokens.c.hash == hash_token(token)))).first()
    if row is None:
        raise Unauthenticated("unknown join token")
    if row.used_at is not None:
        raise Unauthenticated(f"join token {row.id} was used already (by {row.used_for}); ask an admin for a new one")
    if row.expires_at <= now:
        raise Unauthenticated(f"join token {row.id} has expired; ask an admin for a new one")
    return Principal(user=f"join-token/{row.id}", token_id=row.id, bindings=(), expires_at=row.expires_at,
                     join=JoinGrant(token_id=row.id, kind=row.kind, name=row.name, created_by=row.created_by))


async def bindings_of(conn: AsyncConnection, user: str) -> tuple[Binding, ...]:
    rows = (await conn.execute(select(role_bindings).where(role_bindings.c.user == user).order_by(role_bindings.c.id))).all()
    return tuple(Binding(role=Role(r.role), apps=tuple(r.apps) if r.apps is not None else None) for r in rows)


async def granted_bindings(conn: AsyncConnection, user: str) -> tuple[GrantedBinding, ...]:
    """The user's bindings with when they were made and by whom (what maker-checker weighs)."""
    rows = (await conn.execute(select(role_bindings).where(role_bindings.c.user == user).order_by(role_bindings.c.id))).all()
    return tuple(GrantedBinding(Binding(role=Role(r.role), apps=tuple(r.apps) if r.apps is not None else None),
                                created_at=r.created_at, granted_by=r.granted_by) for r in rows)


def validate_user_name(name: Any, path: str = "name") -> str:
    if not isinstance(name, str) or not USER_NAME.match(name):
        raise InvalidInput("invalid user name", problems=[FieldProblem(path, name, "lower-case letters, digits, - _ . @ (1-63 chars)")])
    return name


def validate_role(role: Any, path: str = "role") -> Role:
    """A role a person may hold: the component roles come only with a component's credential (joining)."""
    people = [r for r in Role if r not in COMPONENT_ROLES]
    if role not in [r.value for r in people]:
        raise InvalidInput("invalid role", problems=[FieldProblem(path, role, "one of " + ", ".join(r.value for r in people)
                                                                  + " (nodes and gateways join: 'ballast node join')")])
    return Role(role)


async def create_user(tx: Tx, name: str, role: Role, apps: list[str] | None, actor: str) -> dict[str, Any]:
    tx.touch(ACCESS)
    if (await tx.conn.execute(select(users.c.name).where(users.c.name == name))).first() is not None:
        raise Conflict(f"user {name!r} already exists")
    await tx.conn.execute(insert(users).values(name=name, created_at=tx.now))
    await tx.conn.execute(insert(role_bindings).values(user=name, role=role.value, apps=apps, created_at=tx.now,
                                                       granted_by=actor))
    after = {"name": name, "bindings": [{"role": role.value, "apps": apps}]}
    await tx.audit(actor=actor, action="user.create", resource=f"User/{name}", after=digest(after), detail=after)
    return after


async def _user_state(conn: AsyncConnection, name: str) -> dict[str, Any]:
    """What a user's audit digests cover: the name and every binding (as `user.create` records it)."""
    return {"name": name, "bindings": [{"role": b.role.value, "apps": list(b.apps) if b.apps is not None else None}
                                       for b in await bindings_of(conn, name)]}


async def bind(tx: Tx, name: str, role: Role, apps: list[str] | None, actor: str) -> None:
    tx.touch(ACCESS)
    await _require_user(tx.conn, name)
    before = await _user_state(tx.conn, name)
    await tx.conn.execute(insert(role_bindings).values(user=name, role=role.value, apps=apps, created_at=tx.now,
                                                       granted_by=actor))
    await tx.audit(actor=actor, action="user.bind", resource=f"User/{name}", before=digest(before),
                   after=digest(await _user_state(tx.conn, name)), detail={"role": role.value, "apps": apps})


async def unbind(tx: Tx, name: str, role: Role, actor: str) -> int:
    tx.touch(ACCESS)
    await _require_user(tx.conn, name)
    before = await _user_state(tx.conn, name)
    removed = (await tx.conn.execute(delete(role_bindings).where(role_bindings.c.user == name,
                                                                 role_bindings.c.role == role.value))).rowcount
    if not removed:
        raise NotFound(f"user {name!r} has no {role.value!r} binding")
    await _keep_an_admin(tx.conn, f"unbinding {role.value!r} from {name!r}")
    await tx.audit(actor=actor, action="user.unbind", resource=f"User/{name}", before=digest(before),
                   after=digest(await _user_state(tx.conn, name)), detail={"role": role.value})
    return int(removed)


async def delete_user(tx: Tx, name: str, actor: str) -> None:
    tx.touch(ACCESS)
    await _require_user(tx.conn, name)
    if name == actor:
        raise Conflict("you cannot delete your own user")
    before = await _user_state(tx.conn, name)
    await tx.conn.execute(delete(role_bindings).where(role_bindings.c.user == name))
    await _keep_an_admin(tx.conn, f"deleting user {name!r}")
    await tx.conn.execute(update(tokens).where(tokens.c.user == name, tokens.c.revoked_at.is_(None)).values(revoked_at=tx.now))
    await tx.conn.execute(delete(users).where(users.c.name == name))
    await tx.audit(actor=actor, action="user.delete", resource=f"User/{name}", before=digest(before),
                   detail={"tokens": "revoked"})


async def list_users(conn: AsyncConnection) -> list[dict[str, Any]]:
    out = []
    for row in (await conn.execute(select(users).order_by(users.c.name))).all():
        bs = await bindings_of(conn, row.name)
        out.append({"name": row.name, "createdAt": row.created_at,
                    "bindings": [{"role": b.role.value, "apps": list(b.apps) if b.apps is not None else None} for b in bs]})
    return out


async def create_token(tx: Tx, user: str, name: str, expires: float | None, actor: str) -> dict[str, Any]:
    """A new token for `user`, expiring at `expires` (TokenPolicy.expiry decides it for API callers)."""
    tx.touch(ACCESS)
    await _require_user(tx.conn, user)
    if any(b.role in COMPONENT_ROLES for b in await bindings_of(tx.conn, user)):
        # Else an admin could speak for a node or gateway beside its own credential, unseen by it.
        raise Forbidden(f"user {user!r} is a node's or gateway's principal: its credential is got only by joining "
                        "with an admin's join token ('ballast node join-token create'), never minted")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = "tok_" + secrets.token_hex(6)
    await tx.conn.execute(insert(tokens).values(id=token_id, user=user, name=name, hash=hash_token(secret),
                                                created_at=tx.now, expires_at=expires, revoked_at=None))
    after = _token_state(token_id, user, name, expires, None)
    await tx.audit(actor=actor, action="token.create", resource=f"Token/{token_id}", after=digest(after),
                   detail={"user": user, "name": name, "expiresAt": expires})
    return {"id": token_id, "user": user, "name": name, "token": secret, "expiresAt": expires}


def _token_state(token_id: str, user: str, name: str, expires: float | None, revoked: float | None) -> dict[str, Any]:
    """What a token's audit digests cover (never its secret, nor its hash)."""
    return {"id": token_id, "user": user, "name": name, "expiresAt": expires, "revokedAt": revoked}


async def revoke_token(tx: Tx, token_id: str, actor: str) -> dict[str, Any]:
    tx.touch(ACCESS)
    row = (await tx.conn.execute(select(tokens).where(tokens.c.id == token_id))).first()
    if row is None:
        raise NotFound(f"token {token_id!r} not found")
    if row.revoked_at is not None:
        raise Conflict(f"token {token_id!r} is already revoked")
    await tx.conn.execute(update(tokens).where(tokens.c.id == token_id).values(revoked_at=tx.now))
    await _keep_an_admin_token(tx, f"revoking token {token_id!r}")
    await tx.audit(actor=actor, action="token.revoke", resource=f"Token/{token_id}",
                   before=digest(_token_state(row.id, row.user, row.name, row.expires_at, None)),
                   after=digest(_token_state(row.id, row.user, row.name, row.expires_at, tx.now)),
                   detail={"user": row.user})
    return {"id": token_id, "user": row.user}


async def token_owner(conn: AsyncConnection, token_id: str) -> str | None:
    row = (await conn.execute(select(tokens.c.user).where(tokens.c.id == token_id))).first()
    return None if row is None else str(row.user)


async def list_tokens(conn: AsyncConnection, user: str | None = None) -> list[dict[str, Any]]:
    query = select(tokens).order_by(tokens.c.created_at)
    if user is not None:
        query = query.where(tokens.c.user == user)
    return [{"id": r.id, "user": r.user, "name": r.name, "createdAt": r.created_at, "expiresAt": r.expires_at,
             "revokedAt": r.revoked_at} for r in (await conn.execute(query)).all()]


async def bootstrap_admin(store: Store) -> str | None:
    """On an empty store, create user `admin` and return its first token; otherwise None."""
    async with store.write() as tx:
        if (await tx.conn.execute(select(func.count()).select_from(users))).scalar_one():
            return None
        await create_user(tx, "admin", Role.ADMIN, None, actor="system:bootstrap")
        return str((await create_token(tx, "admin", "bootstrap", None, actor="system:bootstrap"))["token"])


async def _keep_an_admin(conn: AsyncConnection, change: str) -> None:
    """Refuse (inside the change's transaction, so nothing is written) a change that leaves no user holding an
    unscoped admin binding: nobody could manage access again, and the platform would be locked out."""
    admins = (await conn.execute(select(role_bindings.c.apps).where(role_bindings.c.role == Role.ADMIN.value))).all()
    if not any(row.apps is None for row in admins):  # JSON null and SQL NULL both read back as None
        raise Conflict(f"{change} would leave no admin (a user with the admin role for all apps); "
                       f"make another admin first")


async def _keep_an_admin_token(tx: Tx, change: str) -> None:
    """Refuse (inside the change's transaction) a revocation that leaves no admin for all apps with a live token:
    nobody could mint one again, and the platform would be locked out."""
    admins = {row.user for row in (await tx.conn.execute(select(role_bindings.c.user, role_bindings.c.apps).where(
        role_bindings.c.role == Role.ADMIN.value))).all() if row.apps is None}
    live = (await tx.conn.execute(select(tokens.c.id).where(
        tokens.c.user.in_(admins), tokens.c.revoked_at.is_(None),
        (tokens.c.expires_at.is_(None)) | (tokens.c.expires_at > tx.now)).limit(1))).first() if admins else None
    if live is None:
        raise Conflict(f"{change} would leave no admin (for all apps) with a token that works; mint another admin "
                       f"token first")


async def _require_user(conn: AsyncConnection, name: str) -> None:
    if (await conn.execute(select(users.c.name).where(users.c.name == name))).first() is None:
        raise NotFound(f"user {name!r} not found")
