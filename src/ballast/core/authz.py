"""Who may do what: a pure decision over role bindings.

Roles: `admin` (everything), `operator` (change apps, push artifacts, read),
`viewer` (read only), `agent` (node agents: register, report, read
assignments and artifacts), `approver` (read, approve or reject release
orders), `emergency-approver` (read, the extra approval an emergency start
needs). A binding may be scoped to apps; a scoped binding
grants nothing on resources that belong to no app (cells, users, tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(str, Enum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    AGENT = "agent"
    APPROVER = "approver"
    EMERGENCY_APPROVER = "emergency-approver"


class Action(str, Enum):
    READ = "read"              # any GET
    APPLY_APP = "apply-app"    # create/change/delete AppService and its instances
    PUSH_ARTIFACT = "push-artifact"
    MANAGE_CELLS = "manage-cells"
    MANAGE_ACCESS = "manage-access"  # users, role bindings, tokens of other users
    NODE = "node"              # agent: register, heartbeat, report status
    APPROVE_ORDER = "approve-order"
    APPROVE_EMERGENCY = "approve-emergency"
    MANAGE_WINDOWS = "manage-change-windows"


_GRANTS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.OPERATOR: frozenset({Action.READ, Action.APPLY_APP, Action.PUSH_ARTIFACT}),
    Role.VIEWER: frozenset({Action.READ}),
    Role.AGENT: frozenset({Action.READ, Action.NODE}),
    Role.APPROVER: frozenset({Action.READ, Action.APPROVE_ORDER}),
    Role.EMERGENCY_APPROVER: frozenset({Action.READ, Action.APPROVE_EMERGENCY}),
}


@dataclass(frozen=True)
class Binding:
    role: Role
    apps: tuple[str, ...] | None = None  # None: every app and non-app resource


def allowed(bindings: tuple[Binding, ...], action: Action, app: str | None = None) -> bool:
    for b in bindings:
        if action not in _GRANTS[b.role]:
            continue
        if b.apps is None or (app is not None and app in b.apps):
            return True
    return False


def explain_denial(user: str, bindings: tuple[Binding, ...], action: Action, app: str | None) -> str:
    roles = ", ".join(f"{b.role.value}" + (f" on apps {list(b.apps)}" if b.apps is not None else "") for b in bindings) or "no roles"
    target = f" on app {app!r}" if app else ""
    return f"user {user!r} ({roles}) may not {action.value}{target}"
