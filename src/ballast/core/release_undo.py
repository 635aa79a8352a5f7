"""Rolling back a release that has already succeeded: a new release back to the last good revision. Pure.

Once a release is over there is nothing left to turn round; what an operator means by "roll back" then is what
`kubectl rollout undo` and Argo Rollouts' undo do: release the revision that ran before, through the same engine
(grouped and verified like any release), or with `--fast` all at once. Which release is undone, and what `--fast`
asks of the new release, is decided here; services/releases.py records it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ballast.core.release_engine import Phase

UNDO_KIND = "rollback"   # the new release's kind, beside release | scale | evacuate

# --fast: one group holding every instance, no pause, nothing to verify (the engine changes a fast release's
# instances all at once): the emergency way back, like `rollback --fast` of a release still in flight.
FAST_UNDO_OVERRIDES: dict[str, Any] = {"betaSize": 0, "groups": 1, "pause": "none", "noVerify": True}


@dataclass(frozen=True)
class PastRelease:
    id: int
    from_revision: int
    to_revision: int
    phase: Phase


def release_to_undo(history: Sequence[PastRelease], deployed_revision: int) -> PastRelease | None:
    """The newest succeeded release that brought the app to the revision it runs now; going back means releasing
    its `from_revision`. None when no release moved the app there (it has run it since its first deployment, and
    scale or evacuation releases keep the revision): there is nothing to go back to. `history` is oldest first."""
    for past in reversed(history):
        if (past.phase is Phase.SUCCEEDED and past.from_revision != past.to_revision
                and past.to_revision == deployed_revision):
            return past
    return None
