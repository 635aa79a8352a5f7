"""Spec of `strategy.verify` in AppService manifests, and of a release's verify overrides merged onto the app's.

Valid specs become a `core.verification.Verification` on the app's strategy; an invalid one is refused naming the
field path, the value and what was expected. `merge_strategy` takes the overrides as the API sends them (camelCase
keys, None for what was not given).
"""

from __future__ import annotations

from typing import Any

import pytest

from ballast.core.manifests import (
    API_VERSION,
    AppServiceManifest,
    AppServiceSpec,
    parse_documents,
)
from ballast.core.strategy import StrategyOverride, VerifyOverride, WebhookSpec
from ballast.core.verification import OnFailure, PromCheck, Verification, Webhook
from ballast.errors import FieldProblem, InvalidInput
from ballast.services.releases import merge_strategy

TEMPLATE = {"command": ["python", "-m", "shop"]}
VERIFY = "items[0].spec.strategy.verify"
ERRORS = {"name": "errors", "query": 'sum(rate(http_errors{app="$app",revision="$revision"}[$window]))', "max": 0.5}


def app(verify: Any, **strategy: Any) -> dict[str, Any]:
    """An AppService document whose strategy carries `verify`."""
    return {"apiVersion": API_VERSION, "kind": "AppService", "metadata": {"name": "shop"},
            "spec": {"replicas": 2, "template": TEMPLATE, "strategy": {**strategy, "verify": verify}}}


def prometheus(*queries: dict[str, Any], url: str = "http://prom:9090") -> dict[str, Any]:
    return {"url": url, "queries": list(queries)}


def parsed_verify(verify: Any) -> Verification | None:
    [manifest] = parse_documents([app(verify)])
    assert isinstance(manifest, AppServiceManifest)
    return manifest.spec.strategy.to_strategy().verify


def problems_of(document: dict[str, Any]) -> list[FieldProblem]:
    with pytest.raises(InvalidInput) as caught:
        parse_documents([document])
    assert "nothing was applied" in caught.value.message
    return caught.value.problems


# --- valid specs -----------------------------------------------------------------------------------------------------

VALID = [
    pytest.param({}, Verification(), id="empty: the defaults"),
    pytest.param({"minRequests": 20}, Verification(min_requests=20), id="one field, the rest default"),
    pytest.param({"windowSeconds": 60, "minRequests": 500, "maxErrorRate": 0.5, "maxErrorRateIncrease": 0.2,
                  "maxP99Ms": 250, "maxP99Ratio": 1.5, "p99FloorMs": 5, "onFailure": "rollback"},
                 Verification(window_seconds=60.0, min_requests=500, max_error_rate=0.5, max_error_rate_increase=0.2,
                              max_p99_ms=250.0, max_p99_ratio=1.5, p99_floor_ms=5.0, on_failure=OnFailure.ROLLBACK),
                 id="every traffic field"),
    pytest.param({"maxErrorRate": None, "maxP99Ms": 300}, Verification(max_error_rate=None, max_p99_ms=300.0),
                 id="error rate off, p99 on"),
    pytest.param({"maxErrorRate": None, "webhooks": [{"url": "https://checks.local/verify"},
                                                     {"url": "http://10.0.0.5:8080/ok?x=1", "timeoutSeconds": 2}]},
                 Verification(max_error_rate=None, webhooks=(Webhook("https://checks.local/verify", 5.0),
                                                             Webhook("http://10.0.0.5:8080/ok?x=1", 2.0))),
                 id="only webhooks (timeout 5s by default)"),
    pytest.param({"maxErrorRate": None, "prometheus": prometheus(ERRORS, {"name": "rps", "query": "sum(rate(r[1m]))",
                                                                          "min": 1, "max": 1000})},
                 Verification(max_error_rate=None, prometheus_url="http://prom:9090",
                              queries=(PromCheck("errors", ERRORS["query"], max=0.5),
                                       PromCheck("rps", "sum(rate(r[1m]))", max=1000.0, min=1.0))),
                 id="only prometheus queries"),
    pytest.param({"prometheus": prometheus({"name": "flat", "query": "x", "min": 3, "max": 3})},
                 Verification(prometheus_url="http://prom:9090", queries=(PromCheck("flat", "x", max=3.0, min=3.0),)),
                 id="min equal to max"),
    pytest.param({"maxErrorRateIncrease": 0}, Verification(max_error_rate_increase=0.0),
                 id="a zero increase is a limit, not off"),
]


@pytest.mark.parametrize(("verify", "expected"), VALID)
def test_a_valid_verify_becomes_the_strategys_verification(verify: dict[str, Any], expected: Verification) -> None:
    """A valid `verify` parses into Strategy.verify, with defaults for what it leaves out."""
    assert parsed_verify(verify) == expected


def test_the_defaults_are_those_documented() -> None:
    """An empty verify judges 30 s windows of at least 100 requests, at most 1% errors, and pauses on failure."""
    v = parsed_verify({})
    assert v is not None
    assert (v.window_seconds, v.min_requests, v.max_error_rate, v.on_failure) == (30.0, 100, 1.0, OnFailure.PAUSE)


def test_without_verify_the_strategy_does_not_verify() -> None:
    """No `verify` field (or null): releases of the app are not verified."""
    assert parsed_verify(None) is None
    [manifest] = parse_documents([{**app(None), "spec": {"replicas": 1, "template": TEMPLATE}}])
    assert isinstance(manifest, AppServiceManifest) and manifest.spec.strategy.to_strategy().verify is None


# --- invalid specs ---------------------------------------------------------------------------------------------------

Q = {"name": "errors", "query": "up", "max": 1}

INVALID = [
    pytest.param({"minRequests": 0}, f"{VERIFY}.minRequests", 0, "greater than or equal to 1", id="minRequests 0"),
    pytest.param({"minRequests": 2.5}, f"{VERIFY}.minRequests", 2.5, "valid integer", id="minRequests not whole"),
    pytest.param({"windowSeconds": 0.5}, f"{VERIFY}.windowSeconds", 0.5, "greater than or equal to 1",
                 id="window under a second"),
    pytest.param({"windowSeconds": 3601}, f"{VERIFY}.windowSeconds", 3601, "less than or equal to 3600",
                 id="window over an hour"),
    pytest.param({"maxErrorRate": 101}, f"{VERIFY}.maxErrorRate", 101, "less than or equal to 100",
                 id="maxErrorRate above 100%"),
    pytest.param({"maxErrorRate": -1}, f"{VERIFY}.maxErrorRate", -1, "greater than or equal to 0",
                 id="maxErrorRate negative"),
    pytest.param({"maxErrorRateIncrease": -0.1}, f"{VERIFY}.maxErrorRateIncrease", -0.1,
                 "greater than or equal to 0", id="maxErrorRateIncrease negative"),
    pytest.param({"maxP99Ms": 0}, f"{VERIFY}.maxP99Ms", 0, "greater than 0", id="maxP99Ms 0"),
    pytest.param({"maxP99Ratio": 0.9}, f"{VERIFY}.maxP99Ratio", 0.9, "greater than or equal to 1",
                 id="maxP99Ratio below 1"),
    pytest.param({"p99FloorMs": -1}, f"{VERIFY}.p99FloorMs", -1, "greater than or equal to 0", id="negative floor"),
    pytest.param({"onFailure": "explode"}, f"{VERIFY}.onFailure", "explode", "'pause' or 'rollback'",
                 id="onFailure explode"),
    pytest.param({"maxErrorrate": 1}, f"{VERIFY}.maxErrorrate", 1, "Extra inputs are not permitted",
                 id="a misspelt field"),
    pytest.param("yes", VERIFY, "yes", "valid dictionary", id="verify not a mapping"),
    pytest.param({"maxErrorRate": None}, VERIFY, {"maxErrorRate": None}, "verify needs at least one check",
                 id="every check turned off"),
    pytest.param({"maxErrorRate": None, "webhooks": []}, VERIFY, {"maxErrorRate": None, "webhooks": []},
                 "verify needs at least one check", id="every check off, an empty webhook list"),
    pytest.param({"webhooks": [{"url": "ftp://checks.local/x"}]}, f"{VERIFY}.webhooks[0].url", "ftp://checks.local/x",
                 "String should match pattern", id="webhook URL not http(s)"),
    pytest.param({"webhooks": [{"url": "checks.local/x"}]}, f"{VERIFY}.webhooks[0].url", "checks.local/x",
                 "String should match pattern", id="webhook URL without a scheme"),
    pytest.param({"webhooks": [{"url": "http://"}]}, f"{VERIFY}.webhooks[0].url", "http://",
                 "String should match pattern", id="webhook URL without a host"),
    pytest.param({"webhooks": [{"url": "http://a b"}]}, f"{VERIFY}.webhooks[0].url", "http://a b",
                 "String should match pattern", id="webhook URL with a space"),
    pytest.param({"webhooks": [{"url": "http://x", "timeoutSeconds": 0}]}, f"{VERIFY}.webhooks[0].timeoutSeconds", 0,
                 "greater than 0", id="webhook timeout 0"),
    pytest.param({"webhooks": [{"url": "http://x"}] * 11}, f"{VERIFY}.webhooks", [{"url": "http://x"}] * 11,
                 "at most 10 items", id="more than 10 webhooks"),
    pytest.param({"prometheus": prometheus({"name": "errors", "query": "sum(x)"})}, f"{VERIFY}.prometheus.queries[0]",
                 {"name": "errors", "query": "sum(x)"}, "give max, min or both", id="a query without max or min"),
    pytest.param({"prometheus": prometheus({"name": "r", "query": "x", "min": 2, "max": 1})},
                 f"{VERIFY}.prometheus.queries[0]", {"name": "r", "query": "x", "min": 2, "max": 1},
                 "min must not exceed max", id="min above max"),
    pytest.param({"prometheus": prometheus(Q, {**Q, "query": "other"})}, f"{VERIFY}.prometheus.queries",
                 [Q, {**Q, "query": "other"}], "each query needs its own name", id="duplicate query names"),
    pytest.param({"prometheus": prometheus()}, f"{VERIFY}.prometheus.queries", [], "at least 1 item",
                 id="prometheus without queries"),
    pytest.param({"prometheus": prometheus(Q, url="prom:9090")}, f"{VERIFY}.prometheus.url", "prom:9090",
                 "String should match pattern", id="prometheus URL without a scheme"),
    pytest.param({"prometheus": prometheus({**Q, "name": "Error Rate"})}, f"{VERIFY}.prometheus.queries[0].name",
                 "Error Rate", "String should match pattern", id="query name not a DNS label"),
    pytest.param({"prometheus": prometheus({**Q, "query": ""})}, f"{VERIFY}.prometheus.queries[0].query", "",
                 "at least 1 character", id="empty query"),
    pytest.param({"prometheus": prometheus({**Q, "max": float("inf")})}, f"{VERIFY}.prometheus.queries[0].max",
                 float("inf"), "finite number", id="an infinite bound"),
]


@pytest.mark.parametrize(("verify", "path", "value", "expected"), INVALID)
def test_an_invalid_verify_names_path_value_and_expectation(verify: Any, path: str, value: Any,
                                                             expected: str) -> None:
    """Each invalid `verify` is refused with a problem at the exact field path, its value and what was expected."""
    problems = problems_of(app(verify))
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}; got {problems}"
    assert matching[0].value == value
    assert expected in matching[0].expected, matching[0].expected
    assert f"{path}: got {value!r}, expected" in matching[0].render()


def test_every_bad_verify_field_is_reported_at_once() -> None:
    """Several bad fields in one verify: one problem each, none dropped."""
    problems = problems_of(app({"minRequests": 0, "onFailure": "explode", "webhooks": [{"url": "ftp://x"}]}))
    assert sorted(p.path for p in problems) == [f"{VERIFY}.minRequests", f"{VERIFY}.onFailure",
                                                f"{VERIFY}.webhooks[0].url"]


# --- a release's overrides merged onto the app's verify --------------------------------------------------------------

APP_VERIFY = {"minRequests": 50, "maxP99Ms": 200, "webhooks": [{"url": "http://checks.local/a"}],
              "prometheus": prometheus(ERRORS)}
APP_VERIFICATION = Verification(min_requests=50, max_p99_ms=200.0, webhooks=(Webhook("http://checks.local/a"),),
                                prometheus_url="http://prom:9090", queries=(PromCheck("errors", ERRORS["query"], 0.5),))


def spec(verify: dict[str, Any] | None = APP_VERIFY, **strategy: Any) -> AppServiceSpec:
    """The app's spec, its strategy verifying with `verify` (None: not verifying)."""
    return AppServiceSpec.model_validate({"replicas": 2, "template": TEMPLATE,
                                          "strategy": {**strategy, **({"verify": verify} if verify else {})}})


def sent(**fields: Any) -> dict[str, Any]:
    """Strategy overrides as the API passes them on: every field present, None where the request gave none."""
    return StrategyOverride.model_validate(fields).model_dump(by_alias=True)


MERGES = [
    pytest.param(spec(), {}, APP_VERIFICATION, id="no overrides: the app's verify"),
    pytest.param(spec(), sent(), APP_VERIFICATION, id="an API request without strategy fields: the app's verify"),
    pytest.param(spec(), sent(verify={"minRequests": 500}),
                 Verification(min_requests=500, max_p99_ms=200.0, webhooks=APP_VERIFICATION.webhooks,
                              prometheus_url="http://prom:9090", queries=APP_VERIFICATION.queries),
                 id="one field replaced, the app's others kept"),
    pytest.param(spec(), {"verify": {"onFailure": "rollback", "maxP99Ratio": 2}},
                 Verification(min_requests=50, max_p99_ms=200.0, max_p99_ratio=2.0, on_failure=OnFailure.ROLLBACK,
                              webhooks=APP_VERIFICATION.webhooks, prometheus_url="http://prom:9090",
                              queries=APP_VERIFICATION.queries),
                 id="a field the app left unset is added"),
    pytest.param(spec(), sent(verify={"webhooks": [{"url": "https://other.local/b"}]}),
                 Verification(min_requests=50, max_p99_ms=200.0, webhooks=(Webhook("https://other.local/b"),),
                              prometheus_url="http://prom:9090", queries=APP_VERIFICATION.queries),
                 id="webhooks replace the app's list"),
    pytest.param(spec(), sent(verify={"prometheus": prometheus({"name": "rps", "query": "r", "min": 1},
                                                               url="http://prom2:9090")}),
                 Verification(min_requests=50, max_p99_ms=200.0, webhooks=APP_VERIFICATION.webhooks,
                              prometheus_url="http://prom2:9090", queries=(PromCheck("rps", "r", min=1.0),)),
                 id="prometheus replaces the app's, queries and all"),
    pytest.param(spec(None), sent(verify={"maxP99Ratio": 2}), Verification(max_p99_ratio=2.0),
                 id="an app without verify: the overrides onto the defaults"),
    pytest.param(spec(None), {"verify": {"windowSeconds": 10, "minRequests": 5}},
                 Verification(window_seconds=10.0, min_requests=5), id="an app without verify, window and minimum"),
    pytest.param(spec(None), sent(), None, id="an app without verify, nothing asked: not verified"),
    pytest.param(spec(), sent(noVerify=True), None, id="noVerify drops the app's verify"),
    pytest.param(spec(), {"noVerify": True, "verify": {"minRequests": 5}}, None, id="noVerify wins over verify fields"),
    pytest.param(spec(), sent(noVerify=False), APP_VERIFICATION, id="noVerify false keeps it"),
]


@pytest.mark.parametrize(("app_spec", "overrides", "expected"), MERGES)
def test_merge_strategy_merges_verify_field_by_field(app_spec: AppServiceSpec, overrides: dict[str, Any],
                                                     expected: Verification | None) -> None:
    """A release's verify fields replace the app's one by one (or the defaults'); noVerify turns verification off."""
    assert merge_strategy(app_spec, overrides).verify == expected


def test_verify_overrides_leave_the_rest_of_the_strategy_alone() -> None:
    """Overriding verify and pause together changes both, and nothing else of the app's strategy."""
    merged = merge_strategy(spec(groups=4, maxUnavailablePerCell=2), sent(pause="none", verify={"minRequests": 7}))
    assert (merged.groups, merged.max_unavailable_per_cell, merged.pause.value) == (4, 2, "none")
    assert merged.verify is not None and merged.verify.min_requests == 7


def test_the_overrides_model_accepts_what_merge_strategy_needs() -> None:
    """The API's override model takes the same camelCase verify fields the manifest does."""
    override = VerifyOverride.model_validate({"minRequests": 5, "onFailure": "rollback",
                                              "webhooks": [{"url": "http://x"}]})
    assert (override.min_requests, override.on_failure, override.webhooks) == (5, "rollback", [WebhookSpec(url="http://x")])


BAD_OVERRIDES = [
    pytest.param(spec(), {"verify": {"minRequests": 0}}, "strategy.verify.minRequests", 0,
                 "greater than or equal to 1", id="minRequests 0"),
    pytest.param(spec(), {"verify": {"onFailure": "explode"}}, "strategy.verify.onFailure", "explode",
                 "'pause' or 'rollback'", id="onFailure explode"),
    pytest.param(spec(None), {"verify": {"webhooks": [{"url": "ftp://x"}]}}, "strategy.verify.webhooks[0].url",
                 "ftp://x", "String should match pattern", id="a webhook URL that is not http(s)"),
    pytest.param(spec(), {"verify": {"prometheus": prometheus({"name": "q", "query": "up"})}},
                 "strategy.verify.prometheus.queries[0]", {"name": "q", "query": "up"}, "give max, min or both",
                 id="a query without bounds"),
    pytest.param(spec(), {"verify": {"windowSeconds": 0}}, "strategy.verify.windowSeconds", 0,
                 "greater than or equal to 1", id="window 0"),
    pytest.param(spec({"maxErrorRate": None, "webhooks": [{"url": "http://x"}]}), {"verify": {"webhooks": []}},
                 "strategy.verify", {"maxErrorRate": None, "webhooks": []}, "verify needs at least one check",
                 id="emptying the app's only check leaves nothing to check"),
]


@pytest.mark.parametrize(("app_spec", "overrides", "path", "value", "expected"), BAD_OVERRIDES)
def test_a_bad_verify_override_is_refused_naming_the_field(app_spec: AppServiceSpec, overrides: dict[str, Any],
                                                           path: str, value: Any, expected: str) -> None:
    """The merged strategy is validated as one: a bad verify field is InvalidInput naming strategy.verify.…"""
    with pytest.raises(InvalidInput) as caught:
        merge_strategy(app_spec, overrides)
    assert "nothing was started" in caught.value.message
    [problem] = caught.value.problems
    assert problem.path == path
    if isinstance(value, dict) and isinstance(problem.value, dict):
        assert value.items() <= problem.value.items(), problem.value   # the merged verify, defaults filled
    else:
        assert problem.value == value
    assert expected in problem.expected, problem.expected
