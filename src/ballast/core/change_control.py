"""Direct changes of an app, pure: does an active release order or a change window refuse them?

A release order owns its apps while it is active (Running, Paused or RollingBack: from its start until it
succeeds or is rolled back): a direct change of their spec, a deletion or a direct release would act beside the
approved change, unapproved, so each is refused naming the order. A change window binds every change of the apps
it covers that acts on what runs — a release start, instance counts, routes, traffic settings, creating or
deleting the app — not only orders. A new template or strategy only records what a later release will use (the
release is what the window governs, and an order for the next window is prepared this way), so a window lets
those through. Stopping or undoing a change (pause, rollback) is never refused by a window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ballast.core.orders import WindowVerdict

# What a direct change does, as people name it in a refusal.
CREATION = "creation"
DELETION = "deletion"
RELEASE = "release"
INSTANCE_COUNTS = "instance counts"
TEMPLATE = "template"
STRATEGY = "strategy"
ROUTES = "routes (expose)"
TRAFFIC = "traffic settings"

_PART_OF_FIELD = {"cells": INSTANCE_COUNTS, "replicas": INSTANCE_COUNTS, "template": TEMPLATE, "strategy": STRATEGY,
                  "expose": ROUTES, "traffic": TRAFFIC}
# Only recorded for a later release: a window lets these through.
RECORD_ONLY = frozenset({TEMPLATE, STRATEGY})


@dataclass(frozen=True)
class ActiveOrder:
    name: str
    phase: str


def spec_changes(before: dict[str, Any] | None, after: dict[str, Any]) -> tuple[str, ...]:
    """What applying `after` over the stored `before` changes (both in the stored spelling, defaults filled);
    None before: the app is created."""
    if before is None:
        return (CREATION,)
    parts: list[str] = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            part = _PART_OF_FIELD.get(key, key)
            if part not in parts:
                parts.append(part)
    return tuple(parts)


def direct_change_refusal(app: str, parts: Sequence[str], order: ActiveOrder | None,
                          windows: WindowVerdict) -> str | None:
    """Why a direct change of `app` doing `parts` is refused now, or None when it may go ahead."""
    if not parts:
        return None
    what = _describe(parts)
    if order is not None:
        return (f"app {app!r} is under release order {order.name!r} ({order.phase}); its {what} would act beside the "
                f"approved change: wait until the order has ended, steer the order with `ballast order "
                f"pause|resume|rollback {order.name}`, or write a new order")
    if windows.allowed or all(p in RECORD_ONLY for p in parts):
        return None
    if RELEASE in parts:
        way = ("the emergency path is a release order started with `ballast order start NAME --emergency` (it needs "
               "an emergency-approver's approval)")
    else:
        way = ("a change of instance counts, routes or traffic, or a deletion, has no emergency order: it waits for "
               "the window, unless an admin changes the window (audited)")
    return f"app {app!r} may not change now ({what}): {'; '.join(windows.reasons)}; {way}"


_ALONE = {RELEASE: "direct release", DELETION: "deletion", CREATION: "creation"}


def _describe(parts: Sequence[str]) -> str:
    if len(parts) == 1 and parts[0] in _ALONE:
        return _ALONE[parts[0]]
    return "change of " + ", ".join(parts)
