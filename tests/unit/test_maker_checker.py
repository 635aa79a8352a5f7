"""Maker-checker, pure: an approval counts only through a binding covering every app of the order, made before the
order was written and granted by none of its authors; the refusal names the binding and why."""

from __future__ import annotations

import pytest

from ballast.core.authz import Binding, Role
from ballast.core.maker_checker import Authorship, GrantedBinding, decision_refusal

WRITTEN = Authorship(order="chg-42", authors=frozenset({"alice", "carl"}), written_at=1000.0)
APPS = ("a", "b")


def granted(role: Role, at: float, by: str | None, apps: tuple[str, ...] | None = None) -> GrantedBinding:
    return GrantedBinding(Binding(role, apps), created_at=at, granted_by=by)


@pytest.mark.parametrize("bindings, counts, words", [
    ([granted(Role.APPROVER, 10.0, "admin")], True, []),
    ([granted(Role.APPROVER, 0.0, None)], True, []),                  # before records were kept
    ([granted(Role.ADMIN, 10.0, "root")], True, []),                  # an admin binding grants approval too
    ([granted(Role.APPROVER, 10.0, "alice")], False,
     ["binding approver for bob was granted by alice, an author of order chg-42"]),
    ([granted(Role.APPROVER, 1000.0, "admin")], False,             # the same instant is not before
     ["binding approver for bob was made after order chg-42 was written (at 1970-01-01T00:16:40.000+00:00"]),
    ([granted(Role.APPROVER, 2000.0, "carl")], False,
     ["was granted by carl, an author of order chg-42 and was made after order chg-42 was written"]),
    # Each app needs a binding that counts: the young one for b does not, though an old one covers a.
    ([granted(Role.APPROVER, 10.0, "admin", ("a",)), granted(Role.APPROVER, 2000.0, "admin", ("b",))], False,
     ["binding approver on apps b for bob was made after"]),
    ([granted(Role.APPROVER, 10.0, "admin", ("a",)), granted(Role.APPROVER, 10.0, "admin", ("b",))], True, []),
    # A young binding beside an old one that counts does not spoil it.
    ([granted(Role.APPROVER, 2000.0, "alice"), granted(Role.APPROVER, 10.0, "admin")], True, []),
    ([granted(Role.OPERATOR, 10.0, "admin")], False, ["holds no approver role for app(s) a, b"]),
])
def test_whose_approval_counts(bindings: list[GrantedBinding], counts: bool, words: list[str]) -> None:
    refusal = decision_refusal("bob", bindings, APPS, WRITTEN, approve=True, emergency=False)
    assert (refusal is None) == counts, refusal
    for w in words:
        assert refusal is not None and w in refusal, refusal


def test_authors_never_decide_and_a_rejection_needs_only_the_role() -> None:
    young = [granted(Role.APPROVER, 2000.0, "alice")]
    assert "maker-checker: user 'alice' wrote release order 'chg-42'" in str(
        decision_refusal("alice", [granted(Role.ADMIN, 0.0, None)], APPS, WRITTEN, approve=False, emergency=False))
    assert decision_refusal("bob", young, APPS, WRITTEN, approve=False, emergency=False) is None


def test_an_emergency_approval_weighs_the_emergency_approver_binding() -> None:
    bindings = [granted(Role.APPROVER, 10.0, "admin"), granted(Role.EMERGENCY_APPROVER, 2000.0, "admin")]
    assert decision_refusal("dave", bindings, APPS, WRITTEN, approve=True, emergency=False) is None
    refusal = decision_refusal("dave", bindings, APPS, WRITTEN, approve=True, emergency=True)
    assert refusal is not None and "binding emergency-approver for dave was made after order chg-42" in refusal
    assert "binding approver" not in refusal, "only bindings that grant the emergency approval are named"
