"""Spec of the release strategy's one public shape.

`StrategySpec` (and `VerifySpec`) define the fields and their bounds once; the overrides a release takes (the
API's `POST /v1/apps/{app}/releases[/plan]` body, a release order's `strategy:`) have the same fields, each
optional, with the same bounds and choices. A release stores its strategy in that public spelling and every
answer shows it so: camelCase keys only, the same shape a user writes in `spec.strategy`.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from ballast.api.routes_releases import StartRelease
from ballast.core.manifests import (API_VERSION, OrderRelease, StrategyOverride, StrategySpec, VerifyOverride,
                                    VerifySpec, parse_documents)
from ballast.errors import InvalidInput
from tests.conftest import Api
from tests.unit.test_api_releases import audit, ok, release_status, shop_at_revision_1_with_revision_2_recorded

OVERRIDES = {"API release body": StartRelease.model_fields["strategy"].annotation,
             "release order": OrderRelease.model_fields["strategy"].annotation}


def bounds(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A property's JSON schema without what may differ (title, description, default), its null branch dropped."""
    out = []
    for branch in schema.get("anyOf", [schema]):
        if "anyOf" in branch:
            out.extend(bounds(branch))
        elif branch != {"type": "null"}:
            out.append({k: v for k, v in branch.items() if k not in ("title", "description", "default")})
    return out


def properties(model: Any) -> dict[str, Any]:
    assert isinstance(model, type) and issubclass(model, BaseModel)
    return dict(model.model_json_schema()["properties"])


FIELDS = [pytest.param(StrategySpec, override, alias, id=f"{where}: {alias}")
          for where, override in OVERRIDES.items() for alias in properties(StrategySpec) if alias != "verify"]
FIELDS += [pytest.param(VerifySpec, VerifyOverride, alias, id=f"verify: {alias}") for alias in properties(VerifySpec)]


@pytest.mark.parametrize(("spec", "override", "alias"), FIELDS)
def test_an_override_field_has_the_specs_bounds_and_choices(spec: type[BaseModel], override: Any, alias: str) -> None:
    """Each field a release may override takes exactly the values the manifest's field takes, or nothing."""
    assert bounds(properties(override)[alias]) == bounds(properties(spec)[alias])
    assert override.model_validate({}).model_dump(by_alias=True)[alias] is None


@pytest.mark.parametrize("override", OVERRIDES.values(), ids=OVERRIDES.keys())
def test_every_field_of_the_spec_can_be_overridden_and_nothing_else(override: Any) -> None:
    """The API and release orders use the one override model: the spec's fields, verify as fields, and noVerify."""
    assert override is StrategyOverride
    assert set(properties(override)) == set(properties(StrategySpec)) | {"noVerify"}
    assert set(properties(VerifyOverride)) == set(properties(VerifySpec))
    assert bounds(properties(override)["verify"]) == [{"$ref": "#/$defs/VerifyOverride"}]


def test_a_release_order_is_held_to_the_same_bounds() -> None:
    """A group size above the manifest's bound is refused in a release order, naming the field."""
    order = {"apiVersion": API_VERSION, "kind": "ReleaseOrder", "metadata": {"name": "o"},
             "spec": {"title": "t", "releases": [{"app": "shop", "strategy": {"groupSizes": [10_001]}}]}}
    with pytest.raises(InvalidInput) as caught:
        parse_documents([order])
    [problem] = caught.value.problems
    assert (problem.path, problem.value) == ("items[0].spec.releases[0].strategy.groupSizes[0]", 10_001)
    assert "less than or equal to 10000" in problem.expected


async def test_the_api_refuses_a_group_size_the_manifest_refuses(api: Api) -> None:
    """POST .../releases/plan with groupSizes [10001] is a 422 naming strategy.groupSizes[0], as a manifest is."""
    await shop_at_revision_1_with_revision_2_recorded(api)
    r = await api.http.post("/v1/apps/shop/releases/plan", json={"strategy": {"groupSizes": [2, 10_001]}})
    assert r.status_code == 422, r.text
    [problem] = r.json()["problems"]
    assert (problem["path"], problem["value"]) == ("strategy.groupSizes[1]", 10_001)
    assert "less than or equal to 10000" in problem["expected"]


CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def keys(value: Any) -> set[str]:
    """Every mapping key in `value`, at any depth."""
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


VERIFY = {"minRequests": 20, "maxP99Ratio": 2, "webhooks": [{"url": "http://checks.local/a", "timeoutSeconds": 2}],
          "prometheus": {"url": "http://prom:9090", "queries": [{"name": "errors", "query": "up", "max": 1}]}}


async def test_release_answers_show_the_strategy_in_camel_case_only(api: Api) -> None:
    """The plan preview, the release status and the release.start audit record show the strategy as a user writes
    it: the spec's camelCase keys, at every depth, and the same strategy in all three."""
    await shop_at_revision_1_with_revision_2_recorded(api)
    body = {"strategy": {"groupSizes": [1, 2, 2], "pause": "auto", "pauseSeconds": 5, "verify": VERIFY}}
    preview = await ok(api.http.post("/v1/apps/shop/releases/plan", json=body))
    await ok(api.http.post("/v1/apps/shop/releases", json=body), 201)
    status = await release_status(api)
    [started] = [a for a in await audit(api) if a["action"] == "release.start"]

    strategy = status["strategy"]
    assert set(strategy) == set(properties(StrategySpec))
    assert {k for k in keys(strategy) if not CAMEL.match(k)} == set(), strategy
    assert preview["strategy"] == strategy == started["detail"]["strategy"]
    assert StrategySpec.model_validate(strategy) == StrategySpec.model_validate(
        {**body["strategy"], "groups": 3, "verify": VERIFY})
