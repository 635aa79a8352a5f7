"""Direct changes of an app, pure: which parts of a spec an apply changes, and whether an active order or a
closed change window refuses them (the order first; a window lets a change that is only recorded through)."""

from __future__ import annotations

from typing import Any

import pytest

from ballast.core.change_control import (CREATION, DELETION, INSTANCE_COUNTS, RELEASE, ROUTES, STRATEGY, TEMPLATE,
                                         TRAFFIC, ActiveOrder, direct_change_refusal, spec_changes)
from ballast.core.orders import WindowVerdict

SPEC: dict[str, Any] = {"cells": {"a": 1}, "replicas": None, "template": {"command": ["x"]}, "strategy": {"groups": 3},
                        "expose": None, "traffic": {"drain": True}}


@pytest.mark.parametrize("change, parts", [
    ({}, ()),
    ({"cells": {"a": 2}}, (INSTANCE_COUNTS,)),
    ({"cells": None, "replicas": 2}, (INSTANCE_COUNTS,)),
    ({"template": {"command": ["y"]}}, (TEMPLATE,)),
    ({"strategy": {"groups": 2}}, (STRATEGY,)),
    ({"expose": [{"host": "h", "path": "/"}]}, (ROUTES,)),
    ({"traffic": {"drain": False}}, (TRAFFIC,)),
    ({"template": {"command": ["y"]}, "cells": {"a": 0}}, (INSTANCE_COUNTS, TEMPLATE)),
])
def test_spec_changes_name_what_an_apply_changes(change: dict[str, Any], parts: tuple[str, ...]) -> None:
    assert spec_changes(SPEC, {**SPEC, **change}) == parts


def test_a_new_app_is_a_creation() -> None:
    assert spec_changes(None, SPEC) == (CREATION,)


OPEN = WindowVerdict(True, (), ("biz",))
FROZEN = WindowVerdict(False, ("change window 'biz': frozen until 2026-12-27T00:00:00+01:00 (holiday)",), ("biz",))
ORDER = ActiveOrder("chg-42", "Paused")


@pytest.mark.parametrize("parts, order, windows, words", [
    ((), ORDER, FROZEN, None),                                     # an unchanged re-apply
    ((TEMPLATE,), None, OPEN, None),
    ((INSTANCE_COUNTS,), None, OPEN, None),
    ((TEMPLATE,), ORDER, OPEN, "app 'shop' is under release order 'chg-42' (Paused); its change of template"),
    ((DELETION,), ORDER, OPEN, "its deletion would act beside the approved change"),
    ((RELEASE,), ORDER, FROZEN, "release order 'chg-42'"),        # the order is named first
    ((TEMPLATE,), None, FROZEN, None),                             # only recorded: a window lets it through
    ((TEMPLATE, STRATEGY), None, FROZEN, None),
    ((TEMPLATE, INSTANCE_COUNTS), None, FROZEN, "(change of template, instance counts): change window 'biz'"),
    ((RELEASE,), None, FROZEN, "`ballast order start NAME --emergency`"),
    ((ROUTES,), None, FROZEN, "has no emergency order"),
    ((TRAFFIC,), None, FROZEN, "change window 'biz': frozen until"),
    ((DELETION,), None, FROZEN, "may not change now (deletion)"),
    ((CREATION,), None, FROZEN, "may not change now (creation)"),
])
def test_an_active_order_or_a_closed_window_refuses_a_direct_change(
        parts: tuple[str, ...], order: ActiveOrder | None, windows: WindowVerdict, words: str | None) -> None:
    refusal = direct_change_refusal("shop", parts, order, windows)
    if words is None:
        assert refusal is None
    else:
        assert refusal is not None and words in refusal, refusal
