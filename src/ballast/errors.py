"""Ballast's one exception hierarchy.

Every layer raises these; the API maps them to HTTP statuses and the CLI to
exit codes, so a user always gets the field, the value and what was expected.
Foreign exceptions are translated at the boundary (`raise X(...) from exc`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
        body: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.problems:
            body["problems"] = [
                {"path": p.path, "value": _jsonable(p.value), "expected": p.expected} for p in self.problems
            ]
        return body


class InvalidInput(BallastError):
    status = 422


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
    """A compare-and-set lost a race; the caller retries its whole decision."""

    what: str = field(default="")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
