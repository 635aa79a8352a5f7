"""The color as a value: W3C baggage (https://www.w3.org/TR/baggage/) parsed, held and formatted. Pure.

A request's color is the list of members of its `baggage` header. Parsing is
forgiving because the header comes from other people's software: a malformed
member is dropped, never fatal, and what is too much for the limits is cut
from the end. Formatting always yields a header within the limits, so a
process that propagates the color never makes it invalid for the next hop.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MAX_MEMBERS = 180
MAX_BYTES = 8192

# RFC 7230 token; the baggage-octet set (printable ASCII but DQUOTE, comma, semicolon, backslash).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_OWS = " \t"
# What a value keeps unencoded: the baggage-octets but "%", which must be encoded to decode back.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\%')

# Tags Ballast's marking and routing rules read: stricter than W3C, so they fit labels and HAProxy maps.
_TAG = re.compile(r"[A-Za-z0-9._-]+")
MAX_TAG_KEY = 63
MAX_TAG_VALUE = 253


@dataclass(frozen=True)
class Member:
    """One list-member: its key, its decoded value, and its properties as they are re-emitted (`k=v` or `k`)."""

    key: str
    value: str
    properties: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.key):
            raise ValueError(f"baggage key {self.key!r} is not an HTTP token")
        for prop in self.properties:
            if _property(prop) != prop:
                raise ValueError(f"baggage property {prop!r} is not `key` or `key=value`")

    def formatted(self) -> str:
        value = urllib.parse.quote(self.value, safe=_SAFE, errors="replace")
        return ";".join([f"{self.key}={value}", *self.properties])


class Color(Mapping[str, str]):
    """An immutable, ordered mapping of baggage keys to values, with each member's properties kept.

    A key given twice keeps its first place and its last value (and properties). Members past
    180, or past 8192 bytes formatted, are dropped from the end: a Color is always a valid header.
    """

    __slots__ = ("_members",)
    _members: dict[str, Member]

    def __init__(self, tags: Mapping[str, str] | Iterable[tuple[str, str]] = (), /, **more: str) -> None:
        pairs = list(tags.items() if isinstance(tags, Mapping) else tags) + list(more.items())
        self._members = _within_limits(Member(k, v) for k, v in pairs)

    @classmethod
    def of(cls, members: Iterable[Member]) -> Color:
        color = cls.__new__(cls)
        color._members = _within_limits(members)
        return color

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._members.values())

    def with_tags(self, tags: Mapping[str, str] | None = None, /, **more: str) -> Color:
        """This color with `tags` set (a replaced key loses its properties); each tag must be a Ballast tag."""
        added = {**(tags or {}), **more}
        for key, value in added.items():
            check_tag(key, value)
        return Color.of([*self.members, *(Member(k, v) for k, v in added.items())])

    def __getitem__(self, key: str) -> str:
        return self._members[key].value

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Color):
            return self.members == other.members
        return Mapping.__eq__(self, other)

    def __hash__(self) -> int:
        return hash(self.members)

    def __repr__(self) -> str:
        return f"Color({format_baggage(self)!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_members"):
            raise AttributeError("a Color is immutable")
        object.__setattr__(self, name, value)


def check_tag(key: str, value: str) -> None:
    """Raise ValueError unless key=value is a tag Ballast's rules can match."""
    if not (_TAG.fullmatch(key) and len(key) <= MAX_TAG_KEY):
        raise ValueError(f"tag key {key!r}: expected 1-{MAX_TAG_KEY} characters of [A-Za-z0-9._-]")
    if not (_TAG.fullmatch(value) and len(value) <= MAX_TAG_VALUE):
        raise ValueError(f"tag {key}={value!r}: expected a value of 1-{MAX_TAG_VALUE} characters of [A-Za-z0-9._-]")


def parse_baggage(header_values: str | Iterable[str]) -> Color:
    """The color in one or more `baggage` header lines (several lines are one list). Never raises."""
    lines = [header_values] if isinstance(header_values, str) else list(header_values)
    members = (_member(raw) for line in lines for raw in line.split(","))
    return Color.of(m for m in members if m is not None)


def format_baggage(color: Color) -> str:
    """The `baggage` header value for `color` ("" for no members)."""
    return ",".join(m.formatted() for m in color.members)


def _member(raw: str) -> Member | None:
    """A list-member, or None when it is empty or malformed."""
    head, *props = raw.split(";")
    key, sep, value = head.partition("=")
    key, value = key.strip(_OWS), value.strip(_OWS)
    if not sep or not _TOKEN.fullmatch(key) or not _VALUE.fullmatch(value):
        return None
    properties = tuple(_property(p) for p in props)
    if any(p is None for p in properties):
        return None
    # Undecodable octets become U+FFFD, as the specification asks.
    return Member(key, urllib.parse.unquote(value, errors="replace"), properties)  # type: ignore[arg-type]


def _property(raw: str) -> str | None:
    """A property without its optional whitespace (`k`, `k=v`), or None when malformed."""
    key, sep, value = raw.partition("=")
    key, value = key.strip(_OWS), value.strip(_OWS)
    if not _TOKEN.fullmatch(key) or (sep and not _VALUE.fullmatch(value)):
        return None
    return f"{key}={value}" if sep else key


def _within_limits(members: Iterable[Member]) -> dict[str, Member]:
    by_key: dict[str, Member] = {}
    for member in members:
        by_key[member.key] = member  # an existing key keeps its place, the last value wins
    kept: dict[str, Member] = {}
    size = -1  # n members take n-1 commas
    for key, member in by_key.items():
        length = len(member.formatted()) + 1
        if len(kept) == MAX_MEMBERS or size + length > MAX_BYTES:
            break
        kept[key] = member
        size += length
    return kept


EMPTY = Color()
