"""The base of every wire message: a frozen pydantic model, camelCase on the wire, snake_case in Python."""

from __future__ import annotations

from typing import Any, Mapping, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


class Message(BaseModel):
    """Both sides are one version of Ballast: a field the receiver does not know is refused, not passed over."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Self:
        return cls.model_validate(body)


def integral_floats(value: Any, depth: int = 0) -> Any:
    """JSON's 3.0 is the integer 3 (JSON Schema says so; strict pydantic would refuse it): integral floats become
    ints, in lists and mappings too. Booleans stay booleans, for strict validation to refuse where a number goes.
    Deeper than any message nests, a value is left as it is (validation refuses it; recursion must not fail)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if depth >= _DEPTH:
        return value
    if isinstance(value, list):
        return [integral_floats(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: integral_floats(v, depth + 1) for k, v in value.items()}
    return value


_DEPTH = 32


class StrictMessage(Message):
    """A message whose numbers and booleans are what they say: `true` is no number and `1` no boolean (lax
    pydantic takes both). Not for messages with tuples, which strict mode takes only as tuples."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        return integral_floats(data)
