"""Spec of which release a rollback after the fact undoes: the newest succeeded one that brought the app to the
revision it runs, whatever scale or evacuation releases (same revision) or rolled-back ones came after it."""

from __future__ import annotations

import pytest

from ballast.core.release_engine import Phase
from ballast.core.release_undo import PastRelease, release_to_undo

S, RB, F = Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED


@pytest.mark.parametrize(("history", "deployed", "undone"), [
    ([], 1, None),                                                      # never released: nothing to go back to
    ([(1, 1, 1, S)], 1, None),                                          # only a scale release: still revision 1
    ([(1, 1, 2, S)], 2, 1),                                             # 1 → 2: back to 1
    ([(1, 1, 2, S), (2, 2, 2, S)], 2, 1),                               # a scale release after it keeps revision 2
    ([(1, 1, 2, S), (2, 2, 3, RB)], 2, 1),                              # 2 → 3 rolled back: 2 still came from 1
    ([(1, 1, 2, S), (2, 2, 3, S)], 3, 2),                               # the newest step back, not the first one
    ([(1, 1, 2, S), (2, 2, 1, S)], 1, 2),                               # undoing an undo goes forward again
    ([(1, 1, 2, F)], 1, None),                                          # a failed release brought nothing
])
def test_release_to_undo(history: list[tuple[int, int, int, Phase]], deployed: int, undone: int | None) -> None:
    found = release_to_undo([PastRelease(*h) for h in history], deployed)
    assert (found.id if found else None) == undone
