"""Spec of the authorization decision: roles × actions × app scope."""

from __future__ import annotations

import pytest

from ballast.core.authz import Action, Binding, Role, allowed, explain_denial, may_fetch_artifact

A = Action
ALL = tuple(Action)

# Unscoped bindings: what each role may do at all (app-bound actions asked about app "shop" and with no app).
UNSCOPED_GRANTS = {
    Role.ADMIN: set(ALL) - {A.NODE, A.GATEWAY},   # acting as a node or gateway is theirs alone
    Role.OPERATOR: {A.READ, A.APPLY_APP, A.PUSH_ARTIFACT},
    Role.VIEWER: {A.READ},
    Role.NODE: {A.NODE, A.READ_REGISTRY},          # a node's own credential: nothing people read
    Role.GATEWAY: {A.GATEWAY, A.READ_REGISTRY},
    Role.APPROVER: {A.READ, A.APPROVE_ORDER},
    Role.EMERGENCY_APPROVER: {A.READ, A.APPROVE_EMERGENCY},
}


@pytest.mark.parametrize("app", ["shop", None])
@pytest.mark.parametrize("action", ALL)
@pytest.mark.parametrize("role", list(Role))
def test_unscoped_binding_grants_exactly_the_roles_actions(role: Role, action: Action, app: str | None) -> None:
    """An unscoped binding grants its role's actions on every app and on non-app resources, and nothing else."""
    assert allowed((Binding(role),), action, app) is (action in UNSCOPED_GRANTS[role])


@pytest.mark.parametrize(("role", "action", "app", "expected"), [
    # Inside the scope: the role's own grants apply.
    (Role.OPERATOR, A.APPLY_APP, "shop", True),
    (Role.OPERATOR, A.READ, "shop", True),
    (Role.VIEWER, A.READ, "shop", True),
    (Role.ADMIN, A.MANAGE_CELLS, "shop", True),
    # Outside the scope: nothing.
    (Role.OPERATOR, A.APPLY_APP, "pay", False),
    (Role.OPERATOR, A.READ, "pay", False),
    (Role.VIEWER, A.READ, "pay", False),
    (Role.ADMIN, A.APPLY_APP, "pay", False),
    # Resources that belong to no app (cells, users, tokens): a scoped binding grants nothing...
    (Role.OPERATOR, A.APPLY_APP, None, False),
    (Role.VIEWER, A.READ, None, False),
    (Role.ADMIN, A.MANAGE_CELLS, None, False),
    (Role.ADMIN, A.MANAGE_ACCESS, None, False),
    # ...but an artifact belongs to no app until a template runs it: a scoped operator may push one.
    (Role.OPERATOR, A.PUSH_ARTIFACT, None, True),
    (Role.OPERATOR, A.PUSH_ARTIFACT, "pay", True),
    (Role.VIEWER, A.PUSH_ARTIFACT, None, False),
    (Role.NODE, A.PUSH_ARTIFACT, None, False),
    (Role.GATEWAY, A.PUSH_ARTIFACT, None, False),
    # Scope never widens a role.
    (Role.VIEWER, A.APPLY_APP, "shop", False),
    (Role.OPERATOR, A.MANAGE_CELLS, "shop", False),
    (Role.NODE, A.APPLY_APP, "shop", False),
    (Role.NODE, A.READ, "shop", False),
])
def test_binding_scoped_to_shop(role: Role, action: Action, app: str | None, expected: bool) -> None:
    """A binding scoped to app "shop" grants its role's actions on shop only."""
    assert allowed((Binding(role, apps=("shop",)),), action, app) is expected


@pytest.mark.parametrize(("bindings", "action", "app", "expected"), [
    ((), A.READ, None, False),
    ((), A.READ, "shop", False),
    ((Binding(Role.VIEWER), Binding(Role.OPERATOR, apps=("shop",))), A.APPLY_APP, "shop", True),
    ((Binding(Role.VIEWER), Binding(Role.OPERATOR, apps=("shop",))), A.APPLY_APP, "pay", False),
    ((Binding(Role.VIEWER), Binding(Role.OPERATOR, apps=("shop",))), A.READ, "pay", True),
    ((Binding(Role.OPERATOR, apps=("shop",)), Binding(Role.OPERATOR, apps=("pay",))), A.APPLY_APP, "pay", True),
    ((Binding(Role.OPERATOR, apps=()),), A.APPLY_APP, "shop", False),
    ((Binding(Role.NODE), Binding(Role.VIEWER)), A.NODE, None, True),
])
def test_several_bindings_grant_the_union(bindings: tuple[Binding, ...], action: Action, app: str | None,
                                          expected: bool) -> None:
    """Several bindings grant what any one of them grants; no bindings grant nothing."""
    assert allowed(bindings, action, app) is expected


@pytest.mark.parametrize(("bindings", "action", "app", "message"), [
    ((Binding(Role.VIEWER),), A.APPLY_APP, "shop", "user 'carol' (viewer) may not apply-app on app 'shop'"),
    ((Binding(Role.OPERATOR, apps=("shop",)),), A.MANAGE_CELLS, None,
     "user 'carol' (operator on apps ['shop']) may not manage-cells"),
    ((), A.READ, None, "user 'carol' (no roles) may not read"),
])
def test_denial_names_user_roles_action_and_app(bindings: tuple[Binding, ...], action: Action, app: str | None,
                                                message: str) -> None:
    """A denial tells the user who they are, which roles they hold and what was refused."""
    assert explain_denial("carol", bindings, action, app) == message


@pytest.mark.parametrize(("bindings", "referencing", "expected"), [
    # An unscoped admin fetches any artifact, run by an app or not.
    ((Binding(Role.ADMIN),), (), True),
    ((Binding(Role.ADMIN),), ("shop",), True),
    ((Binding(Role.ADMIN, apps=("pay",)),), ("shop",), False),
    # Readers: of one of the apps whose templates run it.
    ((Binding(Role.VIEWER),), ("shop",), True),
    ((Binding(Role.VIEWER),), (), False),
    ((Binding(Role.VIEWER, apps=("shop",)),), ("pay", "shop"), True),
    ((Binding(Role.OPERATOR, apps=("shop",)),), ("pay",), False),
    ((Binding(Role.OPERATOR, apps=("shop",)),), (), False),
    ((Binding(Role.APPROVER),), ("pay",), True),
    # Components read no app: a node fetches what its own granted instances run (the route asks the store, not
    # this rule), a gateway nothing.
    ((Binding(Role.NODE),), ("pay",), False),
    ((Binding(Role.GATEWAY),), ("pay",), False),
    ((), ("shop",), False),
])
def test_who_may_fetch_an_artifact(bindings: tuple[Binding, ...], referencing: tuple[str, ...],
                                   expected: bool) -> None:
    """Fetching an artifact needs read access to an app that runs it (or an unscoped admin)."""
    assert may_fetch_artifact(bindings, referencing) is expected


def test_the_roles_a_person_may_hold_are_every_role_but_the_components() -> None:
    from ballast.core.authz import COMPONENT_ROLES, PersonRole
    assert {r.value for r in PersonRole} == {r.value for r in Role if r not in COMPONENT_ROLES}
