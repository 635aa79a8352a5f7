"""Traffic rules as users write them and as every traffic component receives them.

A `TrafficRule` governs calls to one service: ordered routes, first match wins,
each sending to subsets of the service's endpoints (a revision, some cells) by
relative weight. A `ColoringRule` adds tags to the calls that enter an app (its
inbound sidecar) or the gateway. The field names are public API; the same
models travel in the registry snapshot, with `stable`/`latest` resolved to
revision numbers, so what a component routes by is exactly what was applied.

Everything that reaches an HAProxy configuration is checked here to be
renderable there: header names are tokens, tag keys and values are plain
words, matched text holds no quote or control character, and a regex compiles.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ballast.wire.message import Message, StrictMessage
from ballast.wire.text import NAME_PATTERN

GATEWAY_CALLER = "gateway"      # the gateway's name where a rule names callers or marking points
WEIGHT_MAX = 1_000_000
TAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
TAG_VALUE_PATTERN = r"^[A-Za-z0-9._-]{1,253}$"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"
PATH_PREFIX_PATTERN = r"^/[A-Za-z0-9._~%/-]{0,255}$"
# Visible ASCII and space, without the single quote (HAProxy's strong quote, which cannot be escaped inside it).
_MATCH_TEXT = re.compile(r"^[\x20-\x26\x28-\x7e]{1,256}$")
MATCH_TEXT_EXPECTED = "1..256 printable ASCII characters without a single quote (')"

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
TagKey = Annotated[str, Field(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, Field(pattern=TAG_VALUE_PATTERN)]
HeaderName = Annotated[str, Field(pattern=HEADER_NAME_PATTERN)]
Tags = Annotated[dict[TagKey, TagValue], Field(max_length=20)]


class StringMatch(StrictMessage):
    """How one header's value must look: exactly one of exact, prefix, regex, present."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> "StringMatch":
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of exact, prefix, regex, present")
        if self.present is False:
            raise ValueError("present: true (to match a header that is absent, use a route before it)")
        text = self.exact if self.exact is not None else self.prefix if self.prefix is not None else self.regex
        if text is not None and not _MATCH_TEXT.match(text):
            raise ValueError(MATCH_TEXT_EXPECTED)
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"a valid regular expression ({exc})") from None
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None)


class CallMatch(StrictMessage):
    """What a call must carry: every header condition, every tag and the path prefix (all that are given)."""

    headers: Annotated[dict[HeaderName, StringMatch], Field(max_length=20)] = Field(default_factory=dict)
    tags: Tags = Field(default_factory=dict)
    path_prefix: str | None = Field(None, pattern=PATH_PREFIX_PATTERN,
                                    description="a path prefix by segments: /api matches /api and /api/x, not /apix")

    @field_validator("headers")
    @classmethod
    def _distinct_headers(cls, value: dict[str, StringMatch]) -> dict[str, StringMatch]:
        lowered = [k.lower() for k in value]
        if len(set(lowered)) != len(lowered):
            raise ValueError("header names that differ in more than case (HTTP header names ignore case)")
        return value


class StickyKey(StrictMessage):
    """`{header: NAME}` or `{cookie: NAME}`; a bare name is a header's."""

    header: HeaderName | None = None
    cookie: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")] | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_header(cls, data: Any) -> Any:
        return {"header": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one(self) -> "StickyKey":
        if (self.header is None) == (self.cookie is None):
            raise ValueError("exactly one of header, cookie")
        return self


class Destination(StrictMessage):
    revision: Annotated[int, Field(ge=1, le=2**31 - 1)] | Literal["stable", "latest"] | None = Field(
        None, description="a revision number, stable (the app's deployed revision) or latest; default: any")
    cells: Annotated[list[Name], Field(min_length=1, max_length=50)] | None = None
    group: Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")] | None = Field(
        None, description="an isolation group's code: its instances; default: the app's default pool")
    weight: int = Field(1, ge=0, le=WEIGHT_MAX, description="relative to the route's other destinations")

    @field_validator("cells")
    @classmethod
    def _distinct_cells(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("distinct cell names")
        return value


class TrafficRoute(StrictMessage):
    name: Name
    match: CallMatch | None = Field(None, description="absent: the default route, taking every call")
    to: list[Destination] = Field(min_length=1, max_length=20)
    sticky_key: StickyKey | None = Field(None, description="a caller with the same key lands on the same side")
    fallback: Literal["default", "fail"] = Field("default", description="when the chosen subset has no ready "
                                                 "endpoint: the service's default pool, or 503")

    @field_validator("to")
    @classmethod
    def _weights(cls, value: list[Destination]) -> list[Destination]:
        if sum(d.weight for d in value) <= 0:
            raise ValueError("weights whose sum is above 0")
        return value


class CallerScope(StrictMessage):
    apps: list[Name] = Field(min_length=1, max_length=100, description="caller apps; the gateway is `gateway`")

    @field_validator("apps")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("distinct app names")
        return value


class TrafficRuleSpec(StrictMessage):
    service: Name
    from_: CallerScope | None = Field(None, alias="from", description="whose calls; default: every caller")
    routes: list[TrafficRoute] = Field(min_length=1, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _route_names(cls, data: Any) -> Any:
        """A route without a name is named by its place: route-1, route-2, ..."""
        if isinstance(data, dict) and isinstance(data.get("routes"), list):
            routes = [{"name": f"route-{i + 1}", **r} if isinstance(r, dict) and "name" not in r else r
                      for i, r in enumerate(data["routes"])]
            return {**data, "routes": routes}
        return data

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: list[TrafficRoute]) -> list[TrafficRoute]:
        names = [r.name for r in value]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"distinct route names ({duplicate!r} is used twice)")
        for index, route in enumerate(value[:-1]):
            if route.match is None:
                raise ValueError(f"no route after the default route {route.name!r} (routes[{index}] takes every "
                                 f"call, so {value[index + 1].name!r} would never be reached)")
        return value

    def callers(self) -> tuple[str, ...] | None:
        return tuple(self.from_.apps) if self.from_ is not None else None


class MarkingPoint(StrictMessage):
    apps: list[Name] = Field(min_length=1, max_length=100,
                             description="apps whose inbound sidecars mark; `gateway` for the gateway")


class ColoringRuleSpec(StrictMessage):
    at: MarkingPoint
    match: CallMatch | None = Field(None, description="absent: every call")
    tags: Tags = Field(min_length=1)


class RuleInEffect(Message):
    """A TrafficRule as components route by it: revisions resolved, with the generation that brought it."""

    name: str
    generation: int
    spec: TrafficRuleSpec


class ColoringInEffect(Message):
    name: str
    generation: int
    spec: ColoringRuleSpec
