"""`GET /metrics` parses with prometheus-client's own text parser and carries release, order, instance and
registry state with sensible labels; it needs a token like every API call."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ballast.core.manifests import API_VERSION
from tests.conftest import Api
from tests.unit.test_api_releases import ok, shop_at_revision_1_with_revision_2_recorded


async def test_metrics_parse_and_carry_release_state(api: Api) -> None:
    await shop_at_revision_1_with_revision_2_recorded(api)
    await ok(api.http.post("/v1/apps/shop/releases", json={}), 201)
    order = {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": "chg"},
             "spec": {"title": "t", "releases": [{"app": "shop"}]}}
    await ok(api.http.post("/v1/apply", json={"items": [order]}))
    assert (await api.as_(None).get("/metrics")).status_code == 401

    r = await api.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(r.text) for s in f.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    release = {"app": "shop", "release": "1"}
    assert value("ballast_release_phase", **release, kind="release", phase="Running") == 1
    assert value("ballast_release_phase", **release, kind="release", phase="Paused") == 0
    assert (value("ballast_release_completed_groups", **release), value("ballast_release_groups", **release)) == (0, 3)
    assert value("ballast_release_target_revision", **release) == 2
    assert value("ballast_order_phase", order="chg", phase="PendingApproval", emergency="false") == 1
    per_cell = {k[1]: v for k, v in samples.items() if k[0] == "ballast_instances"}
    assert sum(per_cell.values()) == 10
    assert value("ballast_instances", app="shop", cell="cell-a", revision="1", ready="true") == 5
    assert value("ballast_audit_records") > 0
