"""The base of every wire message: a frozen pydantic model, camelCase on the wire, snake_case in Python."""

from __future__ import annotations

from typing import Any, Mapping, Self

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Message(BaseModel):
    """Both sides are one version of Ballast: a field the receiver does not know is refused, not passed over."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Self:
        return cls.model_validate(body)


class StrictMessage(Message):
    """A message whose numbers and booleans are what they say: `true` is no number and `1` no boolean (lax
    pydantic takes both). Not for messages with tuples, which strict mode takes only as tuples."""

    model_config = ConfigDict(strict=True)
