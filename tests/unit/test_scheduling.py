"""Spec of the scheduler's pure helpers around `place()`: names, ordinals, counts per cell, fixed ports."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ballast.core.manifests import AppServiceSpec
from ballast.core.placement import NewInstance, PlacedInstance, Placement, Resources
from ballast.core.scheduling import (enforce_fixed_port, highest_ordinals_first, instance_id_for, ordinals_for,
                                     wanted_per_cell)

TEMPLATE = {"command": ["python", "-m", "shop"]}


@dataclass(frozen=True)
class Member:
    id: str
    cell: str
    ordinal: int | None


def test_ordered_apps_have_stable_names_and_others_a_random_suffix() -> None:
    assert instance_id_for("db", 2) == "db-2"
    assert instance_id_for("shop", None, lambda n: "ab" * n) == "shop-ababab"
    assert instance_id_for("shop", None) != instance_id_for("shop", None)


@pytest.mark.parametrize(("count", "taken", "expected"), [
    (0, set(), []),
    (3, set(), [0, 1, 2]),
    (2, {0, 2}, [1, 3]),
    (2, {1, 2, 3}, [0, 4]),
])
def test_the_lowest_free_ordinals_are_reused(count: int, taken: set[int], expected: list[int]) -> None:
    assert ordinals_for(count, taken) == expected


def test_ordered_apps_scale_in_from_the_highest_ordinal_per_cell() -> None:
    """Whichever instances `place()` chose, as many per cell go, highest ordinals first."""
    members = [Member("db-0", "a", 0), Member("db-1", "a", 1), Member("db-2", "a", 2), Member("db-3", "b", 3),
               Member("db-4", "b", 4)]
    decision = Placement(create=(), remove=("db-0", "db-1", "db-3"), unplaced=())
    assert highest_ordinals_first(decision, members).remove == ("db-2", "db-1", "db-4")
    nothing = Placement(create=(NewInstance("a", "n1"),), remove=(), unplaced=())
    assert highest_ordinals_first(nothing, members) is nothing


@pytest.mark.parametrize(("spec", "cells", "expected"), [
    ({"cells": {"a": 2, "b": 0}}, ["a", "b", "c"], {"a": 2, "b": 0}),
    ({"replicas": 5}, ["b", "a"], {"a": 3, "b": 2}),
    ({"replicas": 5}, [], {}),
    ({"replicas": 0}, ["a"], {"a": 0}),
])
def test_declared_counts_or_replicas_spread_over_every_cell(spec: dict[str, object], cells: list[str],
                                                             expected: dict[str, int]) -> None:
    assert wanted_per_cell(AppServiceSpec.model_validate({"template": TEMPLATE, **spec}), cells) == expected


def test_a_fixed_port_allows_one_instance_of_the_app_per_node() -> None:
    existing = [PlacedInstance("shop-1", "shop", "n1", "a", Resources(100, 100), 1),
                PlacedInstance("pay-1", "pay", "n2", "a", Resources(100, 100), 2)]
    placement = Placement(create=(NewInstance("a", "n1"), NewInstance("a", "n2"), NewInstance("a", "n2")),
                          remove=(), unplaced=())
    assert enforce_fixed_port(placement, "shop", None, existing) is placement
    assert enforce_fixed_port(placement, "shop", 8080, existing) == Placement(
        create=(NewInstance("a", "n2"),), remove=(),
        unplaced=(("a", 2, "fixed port 8080 allows one instance per node"),))
