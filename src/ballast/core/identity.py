"""Component identities: which node or gateway a credential speaks for.

Every node agent and gateway has its own credential, got by joining with an admin's one-time join token. Its
principal is named `node/NAME` or `gateway/NAME` (a name no person can have: user names hold no `/`) and bound
to the `node` or `gateway` role. These pure rules decide whether a credential may act as a component and what a
join token lets its holder become.
"""

from __future__ import annotations

from dataclasses import dataclass

from ballast.core.authz import Binding, Role

NODE = "node"
GATEWAY = "gateway"
KINDS = (NODE, GATEWAY)
_ROLE = {NODE: Role.NODE, GATEWAY: Role.GATEWAY}
PRINCIPAL_MAX = 63   # what the store keeps of a user name (and an audit actor)


def principal_name(kind: str, name: str) -> str:
    return f"{kind}/{name}"


def role_of(kind: str) -> Role:
    return _ROLE[kind]


def component_of(user: str, bindings: tuple[Binding, ...]) -> tuple[str, str] | None:
    """(kind, name) when `user` is a component's principal holding that component's role, else None."""
    kind, slash, name = user.partition("/")
    if not slash or kind not in _ROLE or not any(b.role is _ROLE[kind] for b in bindings):
        return None
    return kind, name


def acting_as_denial(user: str, bindings: tuple[Binding, ...], kind: str, name: str) -> str | None:
    """Why `user` may not act as the component `kind`/`name` (None: it is that component's own credential)."""
    own = component_of(user, bindings)
    if own == (kind, name):
        return None
    if own is None:
        return (f"user {user!r} may not act as {kind} {name!r}: only that {kind}'s own credential may "
                f"(got by 'ballast node join' with an admin's join token)")
    return f"the credential of {own[0]} {own[1]!r} may not act as {kind} {name!r}"


@dataclass(frozen=True)
class JoinGrant:
    """What a join token lets its holder become: one component of `kind` (None: node or gateway) named `name`
    (None: any name that has not joined yet). A named grant may also re-join (rotate) an existing name."""

    token_id: str
    kind: str | None
    name: str | None
    created_by: str


def join_denial(grant: JoinGrant, kind: str, name: str, exists: bool) -> str | None:
    """Why this join token may not join `kind`/`name` (None: it may); `exists`: that component joined before."""
    if grant.kind is not None and grant.kind != kind:
        return f"join token {grant.token_id} is for a {grant.kind}, not a {kind}"
    if grant.name is not None and grant.name != name:
        return f"join token {grant.token_id} is for {grant.kind or 'component'} {grant.name!r}, not {name!r}"
    if exists and grant.name is None:
        return (f"{kind} {name!r} has joined already; re-joining it (which revokes its credential) needs a join "
                f"token made for that name: 'ballast node join-token create --{kind} {name}'")
    return None
