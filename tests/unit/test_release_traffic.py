"""When a release keeps routing of its own (strategy.traffic): exactly while only its first group runs the new
revision — working on it, verifying it, or paused after it, empty groups skipped — and never going back."""

from __future__ import annotations

import pytest

from ballast.core.release_engine import Direction, Phase, ReleaseView
from ballast.core.release_plan import BetaTraffic, Group, Slot, Strategy
from ballast.core.release_traffic import wanted


def _groups(*sizes: int) -> tuple[Group, ...]:
    return tuple(Group(n, name, tuple(Slot(f"i{n}-{k}", "cell-a") for k in range(size)))
                 for n, (name, size) in enumerate(zip(["beta", "group-1", "group-2", "group-3"], sizes)))


def view(done: int, phase: Phase = Phase.RUNNING, direction: Direction = Direction.FORWARD,
         sizes: tuple[int, ...] = (1, 2, 2), traffic: BetaTraffic | None = BetaTraffic(beta_weight=5)) -> ReleaseView:
    return ReleaseView(app="shop", from_revision=1, to_revision=2, strategy=Strategy(traffic=traffic),
                       groups=_groups(*sizes), phase=phase, direction=direction, completed_groups=done)


@pytest.mark.parametrize(("release", "routes"), [
    (view(0), True),
    (view(0, Phase.PAUSED), True),
    (view(1, Phase.PAUSED), True),                      # beta done, paused before group-1
    (view(1, Phase.RUNNING), False),                    # resumed: group-1 runs
    (view(2, Phase.PAUSED, sizes=(1, 0, 2)), True),     # group-1 empty: paused before group-2
    (view(2, Phase.RUNNING, sizes=(1, 0, 2)), False),
    (view(2, Phase.PAUSED), False),                     # paused after group-1: past beta
    (view(0, Phase.ROLLING_BACK, Direction.ROLLBACK), False),
    (view(0, traffic=None), False),
])
def test_routing_only_while_the_first_group_alone_runs_the_new_revision(release: ReleaseView, routes: bool) -> None:
    assert (wanted(release) is not None) == routes


def test_a_weight_is_a_share_of_a_million_points_and_a_match_is_a_dark_launch() -> None:
    spec = wanted(view(0, traffic=BetaTraffic(beta_weight=0.1)))
    assert spec is not None
    assert spec["routes"] == [{"name": "beta", "to": [{"revision": 1, "weight": 999_000},
                                                      {"revision": 2, "weight": 1_000}]}]
    dark = wanted(view(0, traffic=BetaTraffic(beta_match_json='{"headers": {"x-canary": {"exact": "1"}}}')))
    assert dark is not None
    assert dark["routes"] == [{"name": "beta", "match": {"headers": {"x-canary": {"exact": "1"}}},
                               "to": [{"revision": 2}]}, {"name": "others", "to": [{"revision": 1}]}]
