"""Maker-checker, pure: whose approval of a release order counts.

Being another user than the order's authors is not enough: an author who may manage access could create an
approver, mint its token and approve through it. So an approval counts only through a binding that grants it
for every app of the order, was made before the order was written (its current spec applied: every change by
an author voids the approvals anyway), and was granted by none of the order's authors. A rejection lets nothing
through, so it needs only the role. `decision_refusal()` says why a decision does not count, or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from ballast.core.authz import Action, Binding, allowed


@dataclass(frozen=True)
class GrantedBinding:
    binding: Binding
    created_at: float            # 0: made before records were kept, so older than any order
    granted_by: str | None       # None: made before records were kept, so granted by nobody


@dataclass(frozen=True)
class Authorship:
    order: str
    authors: frozenset[str]      # everyone who created or changed the order
    written_at: float            # when its current spec was applied


def decision_refusal(user: str, bindings: Sequence[GrantedBinding], apps: Sequence[str], written: Authorship, *,
                     approve: bool, emergency: bool) -> str | None:
    """Why `user`'s approval (or rejection) of the order does not count, or None when it does."""
    what = "emergency approval" if emergency else ("approval" if approve else "rejection")
    action = Action.APPROVE_EMERGENCY if emergency else Action.APPROVE_ORDER
    role = "emergency-approver" if emergency else "approver"
    if user in written.authors:
        return (f"maker-checker: user {user!r} wrote release order {written.order!r} (created or changed it) and may "
                f"not give its {what}; another user must")
    granting = [b for b in bindings if any(allowed((b.binding,), action, app) for app in apps)]
    lacking = [app for app in apps if not any(allowed((b.binding,), action, app) for b in granting)]
    if lacking:
        return (f"user {user!r} holds no {role} role for app(s) {', '.join(lacking)} of release order "
                f"{written.order!r}; its {what} needs one for every app")
    if not approve:
        return None
    counting = [b for b in granting if not _disqualified(b, written)]
    uncovered = [app for app in apps if not any(allowed((b.binding,), action, app) for b in counting)]
    if not uncovered:
        return None
    why = [f"binding {_name(b)} for {user} {' and '.join(_disqualified(b, written))}" for b in granting
           if _disqualified(b, written) and any(allowed((b.binding,), action, app) for app in uncovered)]
    return (f"maker-checker: {'; '.join(why)}; an {what} of release order {written.order!r} counts only through a "
            f"{role} binding made before the order was written and granted by none of its authors "
            f"({', '.join(sorted(written.authors))})")


def _disqualified(b: GrantedBinding, written: Authorship) -> list[str]:
    reasons = []
    if b.granted_by is not None and b.granted_by in written.authors:
        reasons.append(f"was granted by {b.granted_by}, an author of order {written.order}")
    if b.created_at >= written.written_at:  # the same instant is not "before"
        reasons.append(f"was made after order {written.order} was written (at {_moment(written.written_at)}; "
                       f"the binding at {_moment(b.created_at)})")
    return reasons


def _name(b: GrantedBinding) -> str:
    scope = f" on apps {', '.join(b.binding.apps)}" if b.binding.apps is not None else ""
    return f"{b.binding.role.value}{scope}"


def _moment(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")
