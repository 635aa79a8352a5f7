"""Ballast's one exception hierarchy.

Every layer raises these; the API maps them to HTTP statuses and the CLI to
exit codes, so a user always gets the field, the value and what was expected.
Foreign exceptions are translated at the boundary (`raise X(...) from exc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldProblem:
    path: str
    value: Any
    expected: str

    def render(self) -> str:
        return f"{self.path}: got {self.value!r}, expected {self.expected}"


class BallastError(Exception):
    """Base class; `status` is the HTTP status the API answers with."""

    status = 500

    def __init__(self, message: str, *, problems: list[FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": type(self).__name__, "message": _text(self.message)}
        if self.problems:
            body["problems"] = [
                {"path": _text(p.path[:_ECHO_PATH]), "value": _jsonable(p.value), "expected": _text(p.expected)}
                for p in self.problems
            ]
        return body


class InvalidInput(BallastError):
    status = 422


class BadRequest(InvalidInput):
    """A request the server cannot act on as sent, though each parameter has a valid form: a `continue` token
    that does not decode, or one made for another list or other filters (400, as Kubernetes answers it)."""
    status = 400


class Gone(BallastError):
    """What was asked for is no longer kept: a watch from a resource version older than the deletions the
    store still remembers (410, as Kubernetes answers it: list again, then watch from the list's version)."""
    status = 410


class NotFound(BallastError):
    status = 404


class Conflict(BallastError):
    status = 409


class Unauthenticated(BallastError):
    status = 401


class Forbidden(BallastError):
    status = 403


class PayloadTooLarge(BallastError):
    status = 413


@dataclass
class RetryableConflict(Exception):
    """A compare-and-set lost a race; the caller retries its whole decision. Not a BallastError: it is for
    the caller to retry, and only one that gives up (the API, after its last attempt) turns it into a
    `Conflict` for the user."""

    what: str  # what changed under the decision, as a noun: "app 'shop'", "the audit chain"


def _text(text: str) -> str:
    """Our own words (messages, expectations): kept whole, but valid UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _jsonable(value: Any, depth: int = 0) -> Any:
    # The offending value is echoed back, so it must survive strict JSON and UTF-8:
    # NaN/Infinity are not JSON, a lone surrogate (a "\ud800" escape) is not UTF-8,
    # and a deeply nested value would exhaust the stack of any recursive encoder.
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    # It is also cut to a short, marked excerpt: a 100 MB value is not answered with a 100 MB error.
    if isinstance(value, str):
        if len(value) > _ECHO_CHARS:
            value = f"{value[:_ECHO_CHARS]}… ({len(value) - _ECHO_CHARS:,} more characters)"
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= _ECHO_DEPTH:
        return "..."
    if isinstance(value, (list, tuple)):
        shown = [_jsonable(v, depth + 1) for v in value[:_ECHO_ITEMS]]
        return shown + ([f"… ({len(value) - _ECHO_ITEMS:,} more items)"] if len(value) > _ECHO_ITEMS else [])
    if isinstance(value, dict):
        kept = {_jsonable(str(k)): _jsonable(v, depth + 1) for k, v in list(value.items())[:_ECHO_ITEMS]}
        if len(value) > _ECHO_ITEMS:
            kept["…"] = f"{len(value) - _ECHO_ITEMS:,} more keys"
        return kept
    return repr(value)[:_ECHO_CHARS]


_ECHO_DEPTH = 20
_ECHO_CHARS = 200
_ECHO_ITEMS = 20
_ECHO_PATH = 500
