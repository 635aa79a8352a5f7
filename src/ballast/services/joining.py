"""Join tokens and component credentials: how a node or gateway gets the one credential that speaks for it.

An admin mints a one-time join token (`create_join_token`); the node or gateway presents it once to `join`,
which consumes it and, in the same transaction, makes the component's principal (`node/NAME`, role `node`) and
its credential. Re-joining an existing name (a join token made for that name) revokes its older credentials.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from sqlalchemy import insert, select, update

from ballast.core.digests import digest
from ballast.core.identity import KINDS, PRINCIPAL_MAX, join_denial, principal_name, role_of
from ballast.core.manifests import NAME_PATTERN
from ballast.errors import Conflict, FieldProblem, Forbidden, InvalidInput
from ballast.services.access import JOIN_TOKEN_PREFIX, TOKEN_PREFIX, Principal, hash_token
from ballast.store.engine import ACCESS, Tx
from ballast.store.schema import join_tokens, role_bindings, tokens, users

DEFAULT_JOIN_SECONDS = 3600.0
MAX_JOIN_SECONDS = 7 * 86400.0
NAME_MAX = PRINCIPAL_MAX - len("gateway/")   # the principal `gateway/NAME` must fit where user names are kept


def validate_component(kind: Any, name: Any) -> tuple[str, str]:
    """(kind, name) of a component that may join; InvalidInput naming each bad field otherwise."""
    problems = [p for p in (_kind_problem(kind), _name_problem(name)) if p is not None]
    if problems:
        raise InvalidInput("invalid component", problems=problems)
    return str(kind), str(name)


def _kind_problem(kind: Any) -> FieldProblem | None:
    return None if kind in KINDS else FieldProblem("kind", kind, " or ".join(KINDS))


def _name_problem(name: Any) -> FieldProblem | None:
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and len(name) <= NAME_MAX:
        return None
    return FieldProblem("name", name, f"a DNS label (lower-case letters, digits, -) of at most {NAME_MAX} characters")


async def create_join_token(tx: Tx, kind: str | None, name: str | None, ttl_seconds: float | None,
                            actor: str) -> dict[str, Any]:
    """A one-time join token for one node or gateway (`name`: only that one; None: any new name)."""
    if name is not None:
        kind, name = validate_component(kind, name)
    elif kind is not None and (problem := _kind_problem(kind)) is not None:
        raise InvalidInput("invalid component", problems=[problem])
    seconds = DEFAULT_JOIN_SECONDS if ttl_seconds is None else ttl_seconds
    if not 0 < seconds <= MAX_JOIN_SECONDS:
        raise InvalidInput("invalid join token lifetime; no token was created", problems=[
            FieldProblem("ttlSeconds", ttl_seconds, f"more than 0 and at most {MAX_JOIN_SECONDS:g} seconds")])
    tx.touch(ACCESS)
    secret = JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = "jt_" + secrets.token_hex(6)
    expires = tx.now + seconds
    await tx.conn.execute(insert(join_tokens).values(id=token_id, hash=hash_token(secret), kind=kind, name=name,
                                                     created_by=actor, created_at=tx.now, expires_at=expires))
    await tx.audit(actor=actor, action="join-token.create", resource=f"JoinToken/{token_id}",
                   after=digest(_join_token_state(token_id, kind, name, expires)),
                   detail={"kind": kind, "name": name, "expiresAt": expires})
    return {"id": token_id, "token": secret, "kind": kind, "name": name, "expiresAt": expires}


async def join(tx: Tx, who: Principal, kind: str, name: str) -> dict[str, Any]:
    """Consume `who`'s join token and make `kind`/`name`'s credential (revoking older ones when it re-joins)."""
    grant = who.join
    if grant is None:
        raise Forbidden(f"user {who.user!r} is no join token: joining needs an admin's join token "
                        "('ballast node join-token create')")
    kind, name = validate_component(kind, name)
    user = principal_name(kind, name)
    tx.touch(ACCESS)
    exists = (await tx.conn.execute(select(users.c.name).where(users.c.name == user))).first() is not None
    before = digest(await credentials_state(tx, user)) if exists else ""
    denial = join_denial(grant, kind, name, exists)
    if denial is not None:
        raise Forbidden(denial)
    # Consumed in this transaction, with a precondition: of two joins racing with one token, one wins.
    used = await tx.conn.execute(update(join_tokens).where(
        join_tokens.c.id == grant.token_id, join_tokens.c.used_at.is_(None), join_tokens.c.expires_at > tx.now,
    ).values(used_at=tx.now, used_for=user))
    if used.rowcount != 1:
        raise Conflict(f"join token {grant.token_id} was used already or has expired")
    revoked: list[str] = []
    if exists:
        revoked = [str(r.id) for r in (await tx.conn.execute(select(tokens.c.id).where(
            tokens.c.user == user, tokens.c.revoked_at.is_(None)))).all()]
        await tx.conn.execute(update(tokens).where(tokens.c.user == user, tokens.c.revoked_at.is_(None))
                              .values(revoked_at=tx.now))
    else:
        await tx.conn.execute(insert(users).values(name=user, created_at=tx.now))
        await tx.conn.execute(insert(role_bindings).values(user=user, role=role_of(kind).value, apps=None,
                                                           created_at=tx.now, granted_by=grant.created_by))
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = "tok_" + secrets.token_hex(6)
    # A component's credential does not expire: it is rotated by re-joining (and revoked like any token).
    await tx.conn.execute(insert(tokens).values(id=token_id, user=user, name=f"{kind} credential", hash=hash_token(secret),
                                                created_at=tx.now, expires_at=None, revoked_at=None))
    await tx.audit(actor=user, action=f"{kind}.join", resource=f"{kind.capitalize()}/{name}",
                   before=before, after=digest(await credentials_state(tx, user)), detail={"joinToken": grant.token_id, "joinTokenBy": grant.created_by, "credential": token_id,
                           "revoked": revoked})
    return {"kind": kind, "name": name, "user": user, "id": token_id, "token": secret, "revoked": revoked}


def _join_token_state(token_id: str, kind: str | None, name: str | None, expires: float) -> dict[str, Any]:
    """What a join token's audit digest covers (never its secret)."""
    return {"id": token_id, "kind": kind, "name": name, "expiresAt": expires}


async def credentials_state(tx: Tx, user: str) -> dict[str, Any]:
    """What a join changes of a component, as its audit digests cover it: its principal, roles and live
    credentials (ids, never secrets); a re-join replaces the credentials."""
    roles = sorted(str(r.role) for r in (await tx.conn.execute(select(role_bindings.c.role).where(
        role_bindings.c.user == user))).all())
    live = sorted(str(r.id) for r in (await tx.conn.execute(select(tokens.c.id).where(
        tokens.c.user == user, tokens.c.revoked_at.is_(None)))).all())
    return {"user": user, "roles": roles, "credentials": live}
