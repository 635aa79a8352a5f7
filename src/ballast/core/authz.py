"""Who may do what: a pure decision over role bindings.

Roles: `admin` (everything people do), `operator` (change apps, push artifacts, read),
`viewer` (read only), `approver` (read, approve or reject release
orders), `emergency-approver` (read, the extra approval an emergency start
needs). A binding may be scoped to apps; a scoped binding
grants nothing on resources that belong to no app (cells, users, tokens),
except pushing an artifact: a package belongs to no app until an app's
template references it, and stays inert until then (applying that template
is what the scope governs), so any operator binding may push one.

`node` and `gateway` are the roles of component credentials (core/identity.py): one per
node agent or gateway, got by joining, never bound to a person. They may act only as
their own component and read the registry; no admin acts as a component.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    NODE = "node"              # a node agent's own credential (core/identity.py)
    GATEWAY = "gateway"        # a gateway's own credential
    APPROVER = "approver"
    EMERGENCY_APPROVER = "emergency-approver"


class PersonRole(str, Enum):
    """The roles a person may be bound to: every Role but the components' (tests/unit/test_authz.py keeps the
    two in step)."""
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    APPROVER = "approver"
    EMERGENCY_APPROVER = "emergency-approver"


class Action(str, Enum):
    READ = "read"              # any GET
    APPLY_APP = "apply-app"    # create/change/delete AppService and its instances
    PUSH_ARTIFACT = "push-artifact"
    MANAGE_CELLS = "manage-cells"
    MANAGE_ACCESS = "manage-access"  # users, role bindings, tokens of other users
    NODE = "node"              # act as a node: register, report, read assignments, acknowledge (its own only)
    GATEWAY = "gateway"        # act as a gateway: register, acknowledge (its own only)
    READ_REGISTRY = "read-registry"  # the registry snapshot traffic components route by
    APPROVE_ORDER = "approve-order"
    APPROVE_EMERGENCY = "approve-emergency"
    MANAGE_WINDOWS = "manage-change-windows"


_GRANTS: dict[Role, frozenset[Action]] = {
    # Acting as a component is the component's own: an admin joins one with a join token instead.
    Role.ADMIN: frozenset(Action) - {Action.NODE, Action.GATEWAY},
    Role.OPERATOR: frozenset({Action.READ, Action.APPLY_APP, Action.PUSH_ARTIFACT}),
    Role.VIEWER: frozenset({Action.READ}),
    Role.NODE: frozenset({Action.NODE, Action.READ_REGISTRY}),
    Role.GATEWAY: frozenset({Action.GATEWAY, Action.READ_REGISTRY}),
    Role.APPROVER: frozenset({Action.READ, Action.APPROVE_ORDER}),
    Role.EMERGENCY_APPROVER: frozenset({Action.READ, Action.APPROVE_EMERGENCY}),
}


COMPONENT_ROLES = frozenset({Role.NODE, Role.GATEWAY})   # given by joining, never to a person

# Actions on resources that belong to no app yet, which a scoped binding grants as well as an unscoped one.
_ANY_SCOPE = frozenset({Action.PUSH_ARTIFACT})


@dataclass(frozen=True)
class Binding:
    role: Role
    apps: tuple[str, ...] | None = None  # None: every app and non-app resource


def allowed(bindings: tuple[Binding, ...], action: Action, app: str | None = None) -> bool:
    for b in bindings:
        if action not in _GRANTS[b.role]:
            continue
        if b.apps is None or action in _ANY_SCOPE or (app is not None and app in b.apps):
            return True
    return False


def readable_apps(bindings: tuple[Binding, ...]) -> frozenset[str] | None:
    """The apps `allowed(bindings, READ, app)` is true of, as a set a query can hold: None when some binding
    reads every app (no restriction), else the union of the reading bindings' scopes (maybe empty). Lists push
    this into their query, so a page is full and holds no app the reader may not read."""
    scopes: set[str] = set()
    for b in bindings:
        if Action.READ not in _GRANTS[b.role]:
            continue
        if b.apps is None:
            return None
        scopes.update(b.apps)
    return frozenset(scopes)


def may_fetch_artifact(bindings: tuple[Binding, ...], referencing_apps: tuple[str, ...]) -> bool:
    """Whether a caller may download an artifact that the templates of `referencing_apps` (any revision) run:
    an unscoped admin always (run or not); anyone else when they may read one of those apps. Nodes do not come
    here: a node's credential fetches only what its own granted instances run (the route asks the store)."""
    if any(b.role is Role.ADMIN and b.apps is None for b in bindings):
        return True
    return any(allowed(bindings, Action.READ, app) for app in referencing_apps)


def explain_denial(user: str, bindings: tuple[Binding, ...], action: Action, app: str | None) -> str:
    roles = ", ".join(f"{b.role.value}" + (f" on apps {list(b.apps)}" if b.apps is not None else "") for b in bindings) or "no roles"
    target = f" on app {app!r}" if app else ""
    return f"user {user!r} ({roles}) may not {action.value}{target}"


def may_read(bindings: tuple[Binding, ...]) -> bool:
    """Whether any binding grants reading something (a component credential's grant none)."""
    return any(Action.READ in _GRANTS[b.role] for b in bindings)
