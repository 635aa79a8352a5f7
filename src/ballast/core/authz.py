"""Who may do what: a pure decision over role bindings.

Roles: `admin` (everything), `operator` (change apps, push artifacts, read),
`viewer` (read only), `agent` (node agents: register, report, read
assignments and artifacts), `approver` (read, approve or reject release
orders), `emergency-approver` (read, the extra approval an emergency start
needs). A binding may be scoped to apps; a scoped binding
grants nothing on resources that belong to no app (cells, users, tokens),
except pushing an artifact: a package belongs to no app until an app's
template references it, and stays inert until then (applying that template
is what the scope governs), so any operator binding may push one.
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


def may_fetch_artifact(bindings: tuple[Binding, ...], referencing_apps: tuple[str, ...]) -> bool:
    """Whether a caller may download an artifact that the templates of `referencing_apps` (any revision) run:
    an unscoped admin always (run or not); anyone else when they may read one of those apps. Node agents read
    every app, so they fetch any artifact an app runs: per-node credentials narrow that here, to the apps
    assigned to the caller's node."""
    if any(b.role is Role.ADMIN and b.apps is None for b in bindings):
        return True
    return any(allowed(bindings, Action.READ, app) for app in referencing_apps)


def explain_denial(user: str, bindings: tuple[Binding, ...], action: Action, app: str | None) -> str:
    roles = ", ".join(f"{b.role.value}" + (f" on apps {list(b.apps)}" if b.apps is not None else "") for b in bindings) or "no roles"
    target = f" on app {app!r}" if app else ""
    return f"user {user!r} ({roles}) may not {action.value}{target}"
