"""Spec of the verification gate in the release engine: `verifies`, `verification_due` and `decide(..., checks)`.

The release, plan and instances are those of tests/unit/test_release_engine.py (release 1 → 2 of the 5+5 app:
beta a0 b0; group-1 a1 a2 b1 b2; group-2 a3 a4 b3 b4). `checks` holds the newest live verification per group index.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import pytest

from ballast.core.release_engine import (
    Decision,
    Direction,
    GroupCheck,
    InstanceView,
    Phase,
    ReleaseView,
    decide,
    verification_due,
    verifies,
)
from ballast.core.release_plan import PauseMode
from ballast.core.verification import OnFailure, Verdict, Verification
from tests.unit.test_release_engine import (
    BETA,
    G1,
    G2,
    IDS,
    NOW,
    at,
    changing,
    groups,
    inst,
    release,
    to,
    world,
)

PAUSE = Verification()                                   # onFailure: pause (the default)
ROLLBACK = Verification(on_failure=OnFailure.ROLLBACK)
SUMMARY = "failed: error rate 4.00% (8 of 200) (at most 1%)"


def verified(verify: Verification = PAUSE, **fields: Any) -> ReleaseView:
    """The release of test_release_engine with verification configured."""
    return release(verify=verify, **fields)


def scale(rel: ReleaseView) -> ReleaseView:
    """The same release as a scale (or evacuation): the revision does not change."""
    return replace(rel, from_revision=2, to_revision=2)


BETA_DONE = world(at(2, *BETA))
GROUP_1_DONE = world(at(2, *BETA, *G1))
ALL_DONE = world(at(2, *IDS))


# --- verifies --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rel", "expected"), [
    pytest.param(verified(), True, id="verify configured, revision changes: verified"),
    pytest.param(release(), False, id="no verify in the strategy: not verified"),
    pytest.param(scale(verified()), False, id="a scale (same revision) is never verified"),
])
def test_verifies(rel: ReleaseView, expected: bool) -> None:
    """Only a release that changes the revision and asks for verification is verified."""
    assert verifies(rel) is expected


# --- verification_due ------------------------------------------------------------------------------------------------

DUE = [
    pytest.param(verified(), BETA_DONE, "beta", id="beta complete: beta is due"),
    pytest.param(verified(completed=1), GROUP_1_DONE, "group-1", id="group-1 complete: group-1 is due"),
    pytest.param(verified(phase=Phase.PAUSED), BETA_DONE, "beta",
                 id="paused with the group complete: still due (a verdict may be judged again)"),
    pytest.param(verified(), world(at(2, "a0"), changing(2, "b0")), None, id="a group not yet complete: not due"),
    pytest.param(verified(), world(), None, id="a group not started: not due"),
    pytest.param(verified(completed=1), BETA_DONE, None, id="beta complete, group-1 not started: nothing due"),
    pytest.param(verified(), world(at(2, "a0"), {"b0": inst("b0", 2, ready=False, phase="BackOff")}), None,
                 id="a group with a failed instance: not due"),
    pytest.param(release(), BETA_DONE, None, id="no verify configured: never due"),
    pytest.param(scale(verified()), ALL_DONE, None, id="a scale release: never due"),
    pytest.param(verified(direction=Direction.ROLLBACK), BETA_DONE, None, id="rolling back: never due"),
    pytest.param(verified(phase=Phase.SUCCEEDED, completed=3), ALL_DONE, None, id="a finished release: never due"),
    pytest.param(verified(completed=3), ALL_DONE, None, id="past the last group: nothing due"),
    pytest.param(verified(plan=groups(BETA, [], G2), completed=1), BETA_DONE, None,
                 id="an empty group is never due"),
]


@pytest.mark.parametrize(("rel", "instances", "group"), DUE)
def test_verification_due(rel: ReleaseView, instances: dict[str, InstanceView], group: str | None) -> None:
    """The current group is due for judging exactly when the release goes forward and every instance of it is done."""
    due = verification_due(rel, instances, NOW)
    assert (due.name if due is not None else None) == group


# --- decide: waiting for a verdict -----------------------------------------------------------------------------------

def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S")


WAITING = [
    pytest.param(None, "beta done; verifying its traffic", id="no check yet"),
    pytest.param(GroupCheck(Verdict.VERIFYING), "beta done; verifying its traffic", id="a window open"),
    pytest.param(GroupCheck(Verdict.VERIFYING, window_end=NOW + 12),
                 f"beta done; verifying its traffic until {_utc(NOW + 12)} UTC",
                 id="a window open: until when (a text that stays the same while it waits)"),
    pytest.param(GroupCheck(Verdict.VERIFYING, window_end=NOW - 3),
                 f"beta done; verifying its traffic until {_utc(NOW - 3)} UTC",
                 id="a window past its end, not yet closed: the same text"),
    pytest.param(GroupCheck(Verdict.ABANDONED), "beta done; verifying its traffic", id="the last attempt abandoned"),
]


@pytest.mark.parametrize(("check", "waiting"), WAITING)
@pytest.mark.parametrize("verify", [PAUSE, ROLLBACK], ids=["onFailure pause", "onFailure rollback"])
def test_a_complete_group_waits_for_its_verdict(verify: Verification, check: GroupCheck | None, waiting: str) -> None:
    """A complete group with no verdict yet holds the release: no transition, no action, and it says why."""
    checks = {0: check} if check is not None else {}
    assert decide(verified(verify), BETA_DONE, NOW, checks) == Decision(waiting=waiting)


def test_a_verdict_on_another_group_does_not_stand_for_the_current_one() -> None:
    """group-1 waits for its own verdict even though beta passed."""
    decision = decide(verified(completed=1), GROUP_1_DONE, NOW, {0: GroupCheck(Verdict.PASSED)})
    assert decision == Decision(waiting="group-1 done; verifying its traffic")


def test_a_group_not_yet_complete_keeps_working_whatever_its_check_says() -> None:
    """Verification gates only the step after a complete group; inside the group the instances change as ever."""
    rel = verified(completed=1)
    state = world(at(2, *BETA))
    for check in ({}, {1: GroupCheck(Verdict.FAILED, SUMMARY)}):
        decision = decide(rel, state, NOW, check)
        assert set(decision.actions) == to(2, "a1", "b1") and decision.transition is None


# --- decide: a passed verdict ----------------------------------------------------------------------------------------

PASSED_LIKE_PLAIN = [
    pytest.param({}, BETA_DONE, 0, id="pause manual: Paused before group-1"),
    pytest.param({"pause": PauseMode.AUTO, "pause_seconds": 30}, BETA_DONE, 0, id="pause auto: Running until +30s"),
    pytest.param({"pause": PauseMode.NONE}, BETA_DONE, 0, id="pause none: straight on"),
    pytest.param({"completed": 1}, GROUP_1_DONE, 1, id="group-1 passed: Paused before group-2"),
    pytest.param({"completed": 2}, ALL_DONE, 2, id="last group passed: Succeeded"),
]


@pytest.mark.parametrize("verify", [PAUSE, ROLLBACK], ids=["onFailure pause", "onFailure rollback"])
@pytest.mark.parametrize(("fields", "instances", "index"), PASSED_LIKE_PLAIN)
def test_a_passed_group_proceeds_exactly_as_without_verification(fields: dict[str, Any],
                                                                 instances: dict[str, InstanceView], index: int,
                                                                 verify: Verification) -> None:
    """PASSED: the same decision as a release that does not verify (its pause, the next group, or success)."""
    plain = decide(release(**fields), instances, NOW)
    assert plain.transition is not None, "the comparison needs a release that moves on"
    assert decide(verified(verify, **fields), instances, NOW, {index: GroupCheck(Verdict.PASSED, "passed: ok")}) == plain


def test_a_passed_last_group_succeeds() -> None:
    """The last group's pass ends the release: Succeeded with every group completed."""
    decision = decide(verified(completed=2), ALL_DONE, NOW, {2: GroupCheck(Verdict.PASSED)})
    assert decision.transition is not None
    assert (decision.transition.phase, decision.transition.completed_groups) == (Phase.SUCCEEDED, 3)


# --- decide: failed and inconclusive verdicts ------------------------------------------------------------------------

STOPS = [
    pytest.param(PAUSE, Verdict.FAILED, Phase.PAUSED, None,
                 ("verification of beta", SUMMARY, "resume to accept it", "--reverify"),
                 id="failed, onFailure pause: Paused with the summary"),
    pytest.param(ROLLBACK, Verdict.FAILED, Phase.ROLLING_BACK, Direction.ROLLBACK,
                 ("verification of beta", SUMMARY, "rolling back automatically to revision 1"),
                 id="failed, onFailure rollback: RollingBack"),
    pytest.param(PAUSE, Verdict.INCONCLUSIVE, Phase.PAUSED, None, ("verification of beta", SUMMARY),
                 id="inconclusive, onFailure pause: Paused"),
    pytest.param(ROLLBACK, Verdict.INCONCLUSIVE, Phase.PAUSED, None,
                 ("verification of beta", SUMMARY, "resume to accept it"),
                 id="inconclusive, onFailure rollback: still only Paused (no evidence to roll back on)"),
]


@pytest.mark.parametrize(("verify", "verdict", "phase", "direction", "words"), STOPS)
def test_a_verdict_that_is_not_a_pass_stops_the_release(verify: Verification, verdict: Verdict, phase: Phase,
                                                        direction: Direction | None, words: tuple[str, ...]) -> None:
    """A failed verdict pauses or rolls back as onFailure says; an inconclusive one always pauses. The group is not
    counted as completed, and the reason quotes the verdict's summary."""
    decision = decide(verified(verify), BETA_DONE, NOW, {0: GroupCheck(verdict, SUMMARY)})
    assert decision.actions == ()
    t = decision.transition
    assert t is not None
    assert (t.phase, t.direction, t.completed_groups, t.pause_until) == (phase, direction, None, None)
    for word in words:
        assert word in t.reason, t.reason


def test_a_release_paused_by_a_verdict_stays_paused() -> None:
    """Once paused on a failed verdict, deciding again transitions nothing and starts nothing."""
    rel = verified(phase=Phase.PAUSED)
    rel = replace(rel, reason=f"verification of beta {SUMMARY}; resume to accept it")
    decision = decide(rel, BETA_DONE, NOW, {0: GroupCheck(Verdict.FAILED, SUMMARY)})
    assert decision == Decision(waiting=rel.reason)


def test_a_rollback_started_by_a_verdict_takes_the_group_back() -> None:
    """After the automatic rollback, the engine sends beta's instances back to revision 1."""
    failed = decide(verified(ROLLBACK), BETA_DONE, NOW, {0: GroupCheck(Verdict.FAILED, SUMMARY)})
    assert failed.transition is not None and failed.transition.direction is not None
    rolling = replace(verified(ROLLBACK), phase=failed.transition.phase, direction=failed.transition.direction)
    assert set(decide(rolling, BETA_DONE, NOW + 1, {0: GroupCheck(Verdict.FAILED, SUMMARY)}).actions) == to(
        1, *BETA)


# --- decide: a verdict a person accepted -----------------------------------------------------------------------------

ACCEPTED = [
    pytest.param({}, Verdict.FAILED, id="failed, accepted, pause manual"),
    pytest.param({}, Verdict.INCONCLUSIVE, id="inconclusive, accepted, pause manual"),
    pytest.param({"pause": PauseMode.AUTO, "pause_seconds": 30}, Verdict.FAILED, id="failed, accepted, pause auto"),
    pytest.param({"pause": PauseMode.NONE}, Verdict.INCONCLUSIVE, id="inconclusive, accepted, pause none"),
]


@pytest.mark.parametrize("verify", [PAUSE, ROLLBACK], ids=["onFailure pause", "onFailure rollback"])
@pytest.mark.parametrize(("fields", "verdict"), ACCEPTED)
def test_an_accepted_verdict_continues_without_a_second_pause(fields: dict[str, Any], verdict: Verdict,
                                                               verify: Verification) -> None:
    """A person who resumed past a verdict has decided on the group: the release starts the next group at once."""
    decision = decide(verified(verify, **fields), BETA_DONE, NOW,
                      {0: GroupCheck(verdict, SUMMARY, accepted_by="alice")})
    t = decision.transition
    assert t is not None
    assert (t.phase, t.completed_groups, t.pause_until, t.direction) == (Phase.RUNNING, 1, None, None)
    assert "starting group-1" in t.reason


def test_an_accepted_verdict_on_the_last_group_succeeds() -> None:
    """Accepting the last group's verdict ends the release."""
    decision = decide(verified(completed=2), ALL_DONE, NOW,
                      {2: GroupCheck(Verdict.FAILED, SUMMARY, accepted_by="alice")})
    assert decision.transition is not None
    assert (decision.transition.phase, decision.transition.completed_groups) == (Phase.SUCCEEDED, 3)


def test_an_accepted_pass_pauses_as_usual() -> None:
    """Only accepting a verdict that stopped the release skips the pause; a plain pass keeps the strategy's."""
    decision = decide(verified(), BETA_DONE, NOW, {0: GroupCheck(Verdict.PASSED)})
    assert decision.transition is not None and decision.transition.phase is Phase.PAUSED


# --- releases and groups that are never verified ---------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "instances"), [
    pytest.param({}, BETA_DONE, id="beta done"),
    pytest.param({"completed": 2}, ALL_DONE, id="last group done"),
    pytest.param({"pause": PauseMode.NONE}, BETA_DONE, id="pause none"),
])
def test_a_scale_release_is_never_verified(fields: dict[str, Any], instances: dict[str, InstanceView]) -> None:
    """A scale or evacuation (from_revision == to_revision) moves on without a verdict, as if verify were unset."""
    rel = replace(verified(**fields), from_revision=2)
    plain = replace(release(**fields), from_revision=2)
    decision = decide(rel, instances, NOW, {})
    assert decision.transition is not None
    assert decision == decide(plain, instances, NOW)


def test_an_empty_group_is_not_verified() -> None:
    """A group with no instances (a small cell) has no traffic to judge: the release moves past it at once."""
    rel = verified(plan=groups(BETA, [], G2), completed=1, pause=PauseMode.NONE)
    decision = decide(rel, BETA_DONE, NOW, {})
    assert decision.transition is not None
    assert (decision.transition.phase, decision.transition.completed_groups) == (Phase.RUNNING, 2)


def test_a_passed_group_skips_the_empty_group_after_it() -> None:
    """After beta passes, an empty group-1 is stepped over: the next stop is before group-2, not group-1."""
    rel = verified(plan=groups(BETA, [], G2))
    decision = decide(rel, BETA_DONE, NOW, {0: GroupCheck(Verdict.PASSED)})
    assert decision.transition is not None
    assert (decision.transition.phase, decision.transition.completed_groups) == (Phase.PAUSED, 2)
    assert "group-2" in decision.transition.reason
