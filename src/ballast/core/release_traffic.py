"""The routing a release keeps while only its first group runs the new revision (`strategy.traffic`). Pure.

While the first group (the beta group) is being changed, verified, or paused after, a TrafficRule owned by the
release sends the new revision `betaWeight` percent of the calls to the app, or only the calls `betaMatch`
matches (a dark launch), whatever the number of its instances; the old revision takes the rest. Once the
release goes past that group, or rolls back, the rule goes (the controller removes it, and a rollback changes
no instance before every traffic component acknowledged the removal). Until the new revision has a ready
endpoint, the rule's subset is empty and its calls take the default pool, as any rule's do.
"""

from __future__ import annotations

import json
from typing import Any

from ballast.core.release_engine import Direction, Phase, ReleaseView
from ballast.core.routing_rules import SCALE

RULE_PREFIX = "release-"


def rule_name(app: str) -> str:
    return f"{RULE_PREFIX}{app}"[:63]


def owner(release_id: int) -> str:
    return f"release/{release_id}"


def wanted(release: ReleaseView) -> dict[str, Any] | None:
    """The spec (JSON, public spelling) of the rule the release wants in effect now, or None for no rule."""
    traffic = release.strategy.traffic
    if traffic is None or release.to_revision == release.from_revision:
        return None
    if release.direction is not Direction.FORWARD or release.phase not in (Phase.RUNNING, Phase.PAUSED):
        return None
    first = next((i for i, g in enumerate(release.groups) if g.slots), 0)
    done = release.completed_groups
    # Past the first group the engine counts the empty groups it skipped too: done is the next group to run.
    if done > first and (release.phase is not Phase.PAUSED or any(g.slots for g in release.groups[first + 1:done])):
        return None   # resumed past the beta group: traffic follows the instances again
    new, old = release.to_revision, release.from_revision
    if traffic.beta_match_json is not None:
        routes = [{"name": "beta", "match": json.loads(traffic.beta_match_json), "to": [{"revision": new}]},
                  {"name": "others", "to": [{"revision": old}]}]
    else:
        share = round((traffic.beta_weight or 0.0) / 100 * SCALE)
        routes = [{"name": "beta", "to": [{"revision": old, "weight": SCALE - share},
                                          {"revision": new, "weight": share}]}]
    return {"service": release.app, "routes": routes}
