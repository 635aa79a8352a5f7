"""The release strategy as users write it: `spec.strategy`, `ballast release start` flags, an order's overrides.

Every field and bound is written once, in `StrategySpec` (and `VerifySpec` for the verification gate); the
override models are derived from them, so the API, release orders and manifests cannot disagree. A release
stores and answers the strategy in this same spelling (`strategy_json`), and the engine gets the pure
`Strategy` value from it (`stored_strategy`). A new strategy field is a field here and in
`core/release_plan.Strategy`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, TypeVar

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from ballast.core.release_plan import BetaTraffic, PauseMode, Strategy, UpgradeMode
from ballast.core.spec_model import Name, SpecModel as _Model
from ballast.core.verification import OnFailure, PromCheck, Verification, Webhook
from ballast.wire.traffic import CallMatch

URL_PATTERN = r"^https?://[^\s/?#]+[^\s]*$"


class WebhookSpec(_Model):
    url: str = Field(pattern=URL_PATTERN, max_length=2000, description="http(s) URL; POSTed to, must answer 2xx")
    timeout_seconds: float = Field(5.0, alias="timeoutSeconds", gt=0, le=120)


class PromQuerySpec(_Model):
    name: Name
    query: str = Field(min_length=1, max_length=4000,
                       description="PromQL; $app, $revision (new), $baseline (old) and $window are substituted")
    max: float | None = Field(None, allow_inf_nan=False)
    min: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounded(self) -> "PromQuerySpec":
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both: the bound every value of the result must keep")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class PrometheusSpec(_Model):
    url: str = Field(pattern=URL_PATTERN, max_length=2000, description="the Prometheus server, e.g. http://prom:9090")
    queries: list[PromQuerySpec] = Field(min_length=1, max_length=20)

    @field_validator("queries")
    @classmethod
    def _unique(cls, value: list[PromQuerySpec]) -> list[PromQuerySpec]:
        names = [q.name for q in value]
        if len(names) != len(set(names)):
            raise ValueError("each query needs its own name")
        return value


class VerifySpec(_Model):
    """Judge each release group from its traffic before the next one starts (see core/verification.py)."""

    window_seconds: float = Field(30.0, alias="windowSeconds", ge=1, le=3600)
    min_requests: int = Field(100, alias="minRequests", ge=1, le=1_000_000_000)
    max_error_rate: float | None = Field(1.0, alias="maxErrorRate", ge=0, le=100, description="percent")
    max_error_rate_increase: float | None = Field(None, alias="maxErrorRateIncrease", ge=0, le=100,
                                                  description="percentage points above the old revision")
    max_p99_ms: float | None = Field(None, alias="maxP99Ms", gt=0, le=3_600_000)
    max_p99_ratio: float | None = Field(None, alias="maxP99Ratio", ge=1, le=1000,
                                        description="times the old revision's p99")
    p99_floor_ms: float = Field(10.0, alias="p99FloorMs", ge=0, le=60_000)
    on_failure: Literal["pause", "rollback"] = Field("pause", alias="onFailure")
    webhooks: list[WebhookSpec] = Field(default_factory=list, max_length=10)
    prometheus: PrometheusSpec | None = None

    @model_validator(mode="after")
    def _something_to_check(self) -> "VerifySpec":
        if (self.max_error_rate is None and self.max_error_rate_increase is None and self.max_p99_ms is None
                and self.max_p99_ratio is None and not self.webhooks and self.prometheus is None):
            raise ValueError("verify needs at least one check: maxErrorRate, maxErrorRateIncrease, maxP99Ms, "
                             "maxP99Ratio, webhooks or prometheus")
        return self

    def to_verification(self) -> Verification:
        prom = self.prometheus
        return Verification(
            window_seconds=self.window_seconds, min_requests=self.min_requests, max_error_rate=self.max_error_rate,
            max_error_rate_increase=self.max_error_rate_increase, max_p99_ms=self.max_p99_ms,
            max_p99_ratio=self.max_p99_ratio, p99_floor_ms=self.p99_floor_ms, on_failure=OnFailure(self.on_failure),
            webhooks=tuple(Webhook(w.url, w.timeout_seconds) for w in self.webhooks),
            prometheus_url=prom.url if prom is not None else None,
            queries=tuple(PromCheck(q.name, q.query, q.max, q.min) for q in prom.queries) if prom is not None else ())

    @classmethod
    def from_verification(cls, v: Verification) -> "VerifySpec":
        prom = None if v.prometheus_url is None else PrometheusSpec(
            url=v.prometheus_url, queries=[PromQuerySpec(name=q.name, query=q.query, max=q.max, min=q.min)
                                           for q in v.queries])
        return cls(window_seconds=v.window_seconds, min_requests=v.min_requests, max_error_rate=v.max_error_rate,
                   max_error_rate_increase=v.max_error_rate_increase, max_p99_ms=v.max_p99_ms,
                   max_p99_ratio=v.max_p99_ratio, p99_floor_ms=v.p99_floor_ms, on_failure=v.on_failure.value,
                   webhooks=[WebhookSpec(url=w.url, timeout_seconds=w.timeout_seconds) for w in v.webhooks],
                   prometheus=prom)


class BetaTrafficSpec(_Model):
    """How much traffic the new revision gets while only the first group runs it (see core/release_traffic.py)."""

    beta_weight: float | None = Field(None, alias="betaWeight", ge=0, le=100, allow_inf_nan=False,
                                      description="percent of calls to the new revision (0.0001 steps)")
    beta_match: CallMatch | None = Field(None, alias="betaMatch",
                                         description="instead: only the calls that match reach the new revision")

    @model_validator(mode="after")
    def _one(self) -> "BetaTrafficSpec":
        if (self.beta_weight is None) == (self.beta_match is None):
            raise ValueError("exactly one of betaWeight, betaMatch")
        return self

    def to_traffic(self) -> BetaTraffic:
        return BetaTraffic(self.beta_weight, json.dumps(self.beta_match.to_json(), sort_keys=True)
                           if self.beta_match is not None else None)

    @classmethod
    def from_traffic(cls, t: BetaTraffic) -> "BetaTrafficSpec":
        return cls(beta_weight=t.beta_weight, beta_match=CallMatch.model_validate(json.loads(t.beta_match_json))
                   if t.beta_match_json is not None else None)


class StrategySpec(_Model):
    """How releases of this app proceed; flags of `ballast release start` override each field."""

    beta_size: int = Field(1, alias="betaSize", ge=0, le=10_000)
    groups: int = Field(3, ge=1, le=100)
    group_sizes: list[Annotated[int, Field(ge=0, le=10_000)]] | None = Field(None, alias="groupSizes", min_length=1, max_length=100)
    pause: Literal["manual", "auto", "none"] = "manual"
    pause_seconds: float = Field(0.0, alias="pauseSeconds", ge=0, le=86_400)
    max_unavailable_per_cell: int = Field(1, alias="maxUnavailablePerCell", ge=1, le=10_000)
    upgrade: Literal["inPlace", "replace", "ordered"] = "inPlace"
    progress_deadline_seconds: float = Field(120.0, alias="progressDeadlineSeconds", gt=0, le=86_400)
    verify: VerifySpec | None = Field(None, description="judge each group from its traffic before going on")
    traffic: BetaTrafficSpec | None = Field(None, description="the new revision's share of calls while only the "
                                                              "first group runs it (default: by instances)")

    def to_strategy(self) -> Strategy:
        return Strategy(beta_size=self.beta_size, groups=self.groups,
                        group_sizes=tuple(self.group_sizes) if self.group_sizes is not None else None,
                        pause=PauseMode(self.pause), pause_seconds=self.pause_seconds,
                        max_unavailable_per_cell=self.max_unavailable_per_cell, upgrade=UpgradeMode(self.upgrade),
                        progress_deadline_seconds=self.progress_deadline_seconds,
                        verify=self.verify.to_verification() if self.verify is not None else None,
                        traffic=self.traffic.to_traffic() if self.traffic is not None else None)

    @classmethod
    def from_strategy(cls, s: Strategy) -> "StrategySpec":
        return cls(beta_size=s.beta_size, groups=s.groups,
                   group_sizes=list(s.group_sizes) if s.group_sizes is not None else None, pause=s.pause.value,
                   pause_seconds=s.pause_seconds, max_unavailable_per_cell=s.max_unavailable_per_cell,
                   upgrade=s.upgrade.value, progress_deadline_seconds=s.progress_deadline_seconds,
                   verify=VerifySpec.from_verification(s.verify) if s.verify is not None else None,
                   traffic=BetaTrafficSpec.from_traffic(s.traffic) if s.traffic is not None else None)


def strategy_json(strategy: Strategy) -> dict[str, Any]:
    """A strategy in its public spelling, every field given: what a user writes in `spec.strategy`, what a release
    stores and what the API answers."""
    return StrategySpec.from_strategy(strategy).model_dump(mode="json", by_alias=True)


def stored_strategy(raw: Mapping[str, Any]) -> Strategy:
    """A strategy as `strategy_json` wrote it (defaults for fields it lacks), as the engine uses it."""
    return StrategySpec.model_validate(raw).to_strategy()


_M = TypeVar("_M", bound=BaseModel)


def _overrides_of(spec: type[BaseModel], **replaced: Any) -> Callable[[type[_M]], type[_M]]:
    """Class decorator: the model also takes every field of `spec`, each optional (None: not given), with the same
    alias, bounds and choices, so the two cannot drift; `replaced` gives a field another type (a nested override).
    The spec's validators are not copied: a partial set of fields is judged once merged onto the app's."""
    def derive(cls: type[_M]) -> type[_M]:
        fields: dict[str, Any] = {}
        for name, info in spec.model_fields.items():
            bounded = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[name] = (Optional[replaced.get(name, bounded)],
                            Field(None, alias=info.alias, description=info.description))
        return create_model(cls.__name__, __base__=cls, __module__=cls.__module__, __doc__=cls.__doc__, **fields)
    return derive


@_overrides_of(VerifySpec)
class VerifyOverride(_Model):
    """Fields of an app's `verify` one release replaces (the rest are the app's, or the defaults): VerifySpec's."""


@_overrides_of(StrategySpec, verify=VerifyOverride)
class StrategyOverride(_Model):
    """Fields of an app's strategy a release order (or `release start`) replaces for one release: StrategySpec's,
    `verify` merged field by field into the app's, and `noVerify`."""

    no_verify: bool | None = Field(None, alias="noVerify", description="true: this release is not verified")
