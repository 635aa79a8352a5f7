"""The public manifest schema (`apiVersion: ballast.io/v1alpha1`).

Field names here are the public API users write in YAML. Parsing is pure:
documents in, typed manifests out, or an `InvalidInput` naming every bad
field path with its value and what was expected. Checks that need the store
(does the cell exist?) live in the apply service, not here. The release
strategy's fields live in core/strategy.py.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from datetime import time as dtime
from zoneinfo import ZoneInfo
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ballast.core.endpoints import DEFAULT_ACK_TIMEOUT_SECONDS, GATEWAY, MESH, TrafficPolicy
from ballast.core.orders import Freeze, WeeklyRange, Window, graph_problems, parse_day
from ballast.core.placement import Resources as ResourceRequest
from ballast.core.placement import parse_cpu, parse_memory
from ballast.core.scheduled_tasks import ScheduledTaskSpec
from ballast.core.spec_model import Name, SpecModel as _Model, iana_zone
from ballast.core.strategy import (StrategyOverride, StrategySpec, VerifyOverride, VerifySpec, stored_strategy,
                                   strategy_json)
from ballast.errors import FieldProblem, InvalidInput
from ballast.wire import assignments as wire
from ballast.wire.assignments import DrainSettings, HealthCheck
from ballast.wire.traffic import ColoringRuleSpec, TrafficRuleSpec
from ballast.wire.text import DIGEST_PATTERN, INT32_MAX, NAME_PATTERN, Labels, StoredText, ip_port, storable

# Shared with the wire and the strategy's own module; importers of manifests find them here too.
__all__ = ["DIGEST_PATTERN", "NAME_PATTERN", "StoredText", "HealthCheck", "ip_port", "StrategySpec", "StrategyOverride",
           "VerifySpec", "VerifyOverride", "strategy_json", "stored_strategy"]

API_VERSION = "ballast.io/v1alpha1"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Metadata(_Model):
    name: Name
    labels: Labels = Field(default_factory=dict)


class CellSpec(_Model):
    zone: Name
    labels: Labels = Field(default_factory=dict)


class ResourcesSpec(wire.Resources):

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | int | float) -> str | int | float:
        parse_cpu(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int) -> str | int:
        parse_memory(value)
        return value

    def request(self) -> ResourceRequest:
        return ResourceRequest(cpu_millis=parse_cpu(self.cpu), memory_bytes=parse_memory(self.memory))


EXEC_BYTES_MAX = 1 * 2**20


class Template(wire.Template):
    """The template's fields and bounds are the wire's (what an agent runs); these are the manifest's rules."""

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not ENV_NAME.match(key):
                raise ValueError(f"environment variable name {key!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if key in ("HOST", "PORT") or key.startswith("BALLAST_"):
                raise ValueError(f"environment variable {key!r} is set by Ballast and cannot be overridden")
        return env

    @field_validator("working_dir")
    @classmethod
    def _inside_the_artifact(cls, value: str | None) -> str | None:
        # The agent runs the command there: a path leading out of the package would run it anywhere on the node.
        if value is not None and (value.startswith("/") or "\x00" in value or ".." in value.replace("\\", "/").split("/")):
            raise ValueError("a relative path inside the artifact (no '..', not absolute)")
        return value

    @model_validator(mode="after")
    def _fits_one_exec(self) -> "Template":
        # The kernel takes a new process's arguments and environment together up to a quarter of the stack limit
        # (2 MiB with the usual 8 MiB): a template that cannot start must be refused here, not stored and then
        # fail on every node with "Argument list too long".
        size = (sum(len(a.encode()) + 1 for a in (*self.command, *self.args))
                + sum(len(k.encode()) + len(v.encode()) + 2 for k, v in self.env.items()))
        if size > EXEC_BYTES_MAX:
            raise ValueError(f"command, args and env together take {size:,} bytes; at most {EXEC_BYTES_MAX:,} "
                             "(what a new process can be given, with room for Ballast's own variables)")
        return self

    @model_validator(mode="after")
    def _working_dir_needs_an_artifact(self) -> "Template":
        if self.working_dir is not None and self.artifact is None:
            raise ValueError("workingDir is a directory inside the artifact: give template.artifact too")
        return self


HOST_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
ROUTE_PATH_PATTERN = r"^/[A-Za-z0-9._~/-]{0,200}$"


class ExposeSpec(_Model):
    """A gateway route: requests for `host` whose path starts with `path` go to this app."""

    host: str = Field(pattern=HOST_PATTERN, max_length=253, description="a lower-case DNS name, e.g. shop.local")
    path: str = Field("/", pattern=ROUTE_PATH_PATTERN,
                      description="a path prefix: / and then letters, digits, . _ ~ / -")

    @field_validator("path")
    @classmethod
    def _no_empty_segments(cls, value: str) -> str:
        if "//" in value:
            raise ValueError("a path prefix without empty segments (no '//')")
        return value


class TrafficSpec(DrainSettings):
    """How the data plane carries the app's traffic, and how its instances are drained."""

    components: list[Literal["gateway", "mesh"]] | None = Field(
        None, description="what routes to the app (default: mesh, and gateway when exposed)")
    ack_timeout_seconds: float = Field(DEFAULT_ACK_TIMEOUT_SECONDS, alias="ackTimeoutSeconds", gt=0, le=3600)
    stress: Literal["allow", "deny"] = Field(
        "allow", description="whether the app's default instances take stress-test calls (tag stress=true); with "
                             "deny they reach only an isolation group with stress: true, or fail with 503")


class FailoverSpec(_Model):
    """Where a cell's instances may go when their cell cannot hold them (its nodes dead or full), in order.
    Without it nothing leaves its cell: a cell is a failure domain."""

    cells: list[Name] = Field(min_length=1, max_length=100)

    @field_validator("cells")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(value) != len(set(value)):
            raise ValueError("names a cell twice")
        return value


class AppServiceSpec(_Model):
    cells: dict[Name, Annotated[int, Field(ge=0, le=10_000)]] | None = None
    replicas: int | None = Field(None, ge=0, le=10_000)
    template: Template
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    expose: list[ExposeSpec] | None = Field(None, max_length=50)
    traffic: TrafficSpec = Field(default_factory=TrafficSpec)
    failover: FailoverSpec | None = None

    @field_validator("expose", mode="before")
    @classmethod
    def _one_route_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_spread(self) -> "AppServiceSpec":
        if self.cells is None and self.replicas is None:
            raise ValueError("give either cells (instances per cell) or replicas (even spread over all cells)")
        if self.cells is not None and self.replicas is not None:
            raise ValueError("give cells or replicas, not both")
        if self.traffic.components is not None and "gateway" in self.traffic.components and not self.expose:
            raise ValueError("traffic.components names gateway, but the app has no expose route for it")
        if self.expose and self.traffic.components is not None and "gateway" not in self.traffic.components:
            raise ValueError("the app is exposed, so traffic.components must include gateway")
        routes = [(r.host, r.path.rstrip("/") or "/") for r in self.expose or []]
        if len(routes) != len(set(routes)):
            raise ValueError("expose lists the same host and path twice")
        return self

    def traffic_components(self) -> frozenset[str]:
        if self.traffic.components is not None:
            return frozenset(self.traffic.components)
        return frozenset({MESH, GATEWAY} if self.expose else {MESH})

    def traffic_policy(self) -> TrafficPolicy:
        return TrafficPolicy(components=self.traffic_components(), drain=self.traffic.drain,
                             drain_timeout_seconds=self.traffic.drain_timeout_seconds,
                             ack_timeout_seconds=self.traffic.ack_timeout_seconds)


class OrderRelease(_Model):
    app: Name
    to_revision: int | None = Field(None, alias="toRevision", ge=1, le=INT32_MAX,
                                    description="default: the app's newest revision when the order is applied")
    after: list[Name] = Field(default_factory=list, max_length=100)
    strategy: StrategyOverride = Field(default_factory=StrategyOverride)


class ReleaseOrderSpec(_Model):
    title: str = Field(min_length=1, max_length=200)
    reason: str = Field("", max_length=4000)
    ticket: str = Field("", max_length=200, description="the change ticket this order carries out")
    approvals: int = Field(1, ge=1, le=10, description="approvals needed, by users other than the author")
    max_parallel: int = Field(1, alias="maxParallel", ge=1, le=100)
    releases: list[OrderRelease] = Field(min_length=1, max_length=100)


HHMM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class AllowedRange(_Model):
    days: list[Annotated[str, Field(max_length=16)]] = Field(min_length=1, max_length=7, description="mon, tue, ... sun")
    start: str = Field(pattern=HHMM, description="HH:MM, local time of the window's timeZone")
    end: str = Field(pattern=HHMM, description="HH:MM; at or before start: the range ends the next day")

    @field_validator("days")
    @classmethod
    def _days(cls, value: list[str]) -> list[str]:
        for day in value:
            parse_day(day)
        return value


class FreezeSpec(_Model):
    # strict=False: a manifest writes a moment as ISO 8601 text, which only lax mode parses
    start: datetime = Field(alias="from", strict=False,
                            description="ISO 8601 date-time; without an offset: the window's timeZone")
    end: datetime = Field(alias="to", strict=False)
    reason: str = Field("", max_length=500)

    @model_validator(mode="after")
    def _ordered(self) -> "FreezeSpec":
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError("give both from and to with an offset, or both without")
        if self.end <= self.start:
            raise ValueError("to must be after from")
        return self


class ChangeWindowSpec(_Model):
    time_zone: str = Field("UTC", alias="timeZone", max_length=64, description="an IANA time zone, e.g. Europe/Zurich")
    allowed: list[AllowedRange] = Field(default_factory=list, max_length=50,
                                        description="weekly times changes may start (empty: any time not frozen)")
    freezes: list[FreezeSpec] = Field(default_factory=list, max_length=200)
    apps: list[Name] | None = Field(None, max_length=1000, description="the apps it governs (default: every app)")

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return iana_zone(value)

    def to_window(self, name: str) -> Window:
        zone = ZoneInfo(self.time_zone)

        def hhmm(text: str) -> dtime:
            return dtime(int(text[:2]), int(text[3:]))

        def aware(moment: datetime) -> datetime:
            return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)
        return Window(name=name, zone=self.time_zone,
                      allowed=tuple(WeeklyRange(tuple(sorted({parse_day(d) for d in r.days})), hhmm(r.start), hhmm(r.end))
                                    for r in self.allowed),
                      freezes=tuple(Freeze(aware(f.start), aware(f.end), f.reason) for f in self.freezes),
                      apps=tuple(self.apps) if self.apps is not None else None)


class CellManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Cell"]
    metadata: Metadata
    spec: CellSpec


class AppServiceManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["AppService"]
    metadata: Metadata
    spec: AppServiceSpec


class ReleaseOrderManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ReleaseOrder"]
    metadata: Metadata
    spec: ReleaseOrderSpec


class ChangeWindowManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ChangeWindow"]
    metadata: Metadata
    spec: ChangeWindowSpec


class TrafficRuleManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TrafficRule"]
    metadata: Metadata
    spec: TrafficRuleSpec


class ColoringRuleManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ColoringRule"]
    metadata: Metadata
    spec: ColoringRuleSpec


UNIT_CODE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class IsolationGroupSpec(_Model):
    """Instances of `app` set apart for one business flow (the unit `code`), in no caller's default pool."""

    app: Name
    code: str = Field(pattern=UNIT_CODE_PATTERN, max_length=63,
                      description="the business unit's code, a DNS label; the groups of one unit share it")
    cells: dict[Name, Annotated[int, Field(ge=0, le=10_000)]] | None = None
    replicas: int | None = Field(None, ge=0, le=10_000)
    convergence: Literal["prefer", "strict"] = Field(
        "prefer", description="the group's own calls stay in the unit where the callee has a group of this code; "
                              "elsewhere they go to the callee's default pool (prefer) or fail with 503 (strict)")
    stress: bool = Field(False, description="the group may receive stress-test calls (tag stress=true)")

    @model_validator(mode="after")
    def _one_spread(self) -> "IsolationGroupSpec":
        if (self.cells is None) == (self.replicas is None):
            raise ValueError("give either cells (instances per cell) or replicas (even spread over all cells)")
        return self


class IsolationGroupManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["IsolationGroup"]
    metadata: Metadata
    spec: IsolationGroupSpec


class ScheduledTaskManifest(_Model):
    api_version: Literal["ballast.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ScheduledTask"]
    metadata: Metadata
    spec: ScheduledTaskSpec


Manifest = Union[CellManifest, AppServiceManifest, ReleaseOrderManifest, ChangeWindowManifest, TrafficRuleManifest,
                 ColoringRuleManifest, IsolationGroupManifest, ScheduledTaskManifest]
KINDS: dict[str, type[BaseModel]] = {"Cell": CellManifest, "AppService": AppServiceManifest,
                                     "ReleaseOrder": ReleaseOrderManifest, "ChangeWindow": ChangeWindowManifest,
                                     "TrafficRule": TrafficRuleManifest, "ColoringRule": ColoringRuleManifest,
                                     "IsolationGroup": IsolationGroupManifest, "ScheduledTask": ScheduledTaskManifest}


def parse_documents(documents: list[Any], *, source: str = "items") -> list[Manifest]:
    """Parse every document or none: all problems of all documents are reported together."""
    problems: list[FieldProblem] = []
    parsed: list[Manifest] = []
    seen: dict[tuple[str, str], int] = {}
    for index, doc in enumerate(documents):
        where = f"{source}[{index}]"
        manifest = _parse_one(doc, where, problems)
        if manifest is None:
            continue
        key = (manifest.kind, manifest.metadata.name)
        if key in seen:
            problems.append(FieldProblem(f"{where}.metadata.name", manifest.metadata.name,
                                         f"a name not already used by {source}[{seen[key]}] ({manifest.kind})"))
            continue
        seen[key] = index
        parsed.append(manifest)
    if problems:
        raise InvalidInput(f"{len(problems)} problem(s) in manifests; nothing was applied", problems=problems)
    return parsed


def _parse_one(doc: Any, where: str, problems: list[FieldProblem]) -> Manifest | None:
    if not isinstance(doc, dict):
        problems.append(FieldProblem(where, doc, "a mapping with apiVersion, kind, metadata, spec"))
        return None
    if doc.get("apiVersion") != API_VERSION:
        problems.append(FieldProblem(f"{where}.apiVersion", doc.get("apiVersion"), f"{API_VERSION!r}"))
        return None
    kind = doc.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        problems.append(FieldProblem(f"{where}.kind", kind, "one of " + ", ".join(sorted(KINDS))))
        return None
    unstorable = _unstorable_text(doc, where)
    if unstorable:
        problems.extend(unstorable)
        return None
    try:
        manifest = model.model_validate(doc)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, where))
        return None
    if isinstance(manifest, ReleaseOrderManifest):  # the dependencies must form a DAG over the order's apps
        graph = graph_problems([(r.app, r.after) for r in manifest.spec.releases], f"{where}.spec.releases")
        if graph:
            problems.extend(graph)
            return None
    return manifest  # type: ignore[return-value]


def _unstorable_text(doc: Any, where: str) -> list[FieldProblem]:
    """Strings no store can hold and no process can be given: NUL characters and unpaired surrogates.

    Iterative, so a deeply nested document cannot exhaust the stack.
    """
    out: list[FieldProblem] = []
    pending: list[tuple[str, Any]] = [(where, doc)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, str) and not storable(value):
            out.append(FieldProblem(path, value, "text without NUL characters or unpaired surrogates"))
        elif isinstance(value, list):
            pending.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                pending.extend([(f"{path}.{key}", key), (f"{path}.{key}", item)])
    return sorted(out, key=lambda p: p.path)


def problems_from_validation(exc: ValidationError, prefix: str = "") -> list[FieldProblem]:
    out = []
    for err in exc.errors(include_url=False):
        path = prefix
        for part in err["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in ("function-after", "str", "int", "float", "list[...]", "[key]") or str(part).startswith(("function-", "literal[")):
                continue  # union branch markers say nothing to a user
            else:
                path += f".{part}" if path else str(part)
        value = err.get("input")
        expected = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":  # pydantic shows the enclosing mapping; say plainly what is missing
            value, expected = None, "a value: this field is required"
        out.append(FieldProblem(path or "(document)", value, expected))
    return _dedupe(out)


def _dedupe(problems: list[FieldProblem]) -> list[FieldProblem]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for p in problems:
        key = (p.path, p.expected)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def spec_json(manifest: Manifest) -> dict[str, Any]:
    """The spec as stored: aliases (public names), defaults filled, stable."""
    return manifest.spec.model_dump(mode="json", by_alias=True)


@functools.lru_cache(maxsize=4096)
def _parse_stored(text: str) -> AppServiceSpec:
    return AppServiceSpec.model_validate_json(text)


def stored_spec(raw: dict[str, Any]) -> AppServiceSpec:
    """A stored AppService spec, parsed once per distinct content (controllers read every app on every pass)."""
    return _parse_stored(json.dumps(raw, sort_keys=True))
