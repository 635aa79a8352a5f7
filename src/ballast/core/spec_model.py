"""The base of every manifest model: frozen, strict about unknown fields, public names as aliases."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ballast.wire.message import integral_floats
from ballast.wire.text import NAME_PATTERN

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case DNS label")]


class SpecModel(BaseModel):
    # strict: `true` is not 1 and `1` not true (lax pydantic would take both); a field that must parse text
    # (a date-time) says strict=False itself.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        return integral_floats(data)


def iana_zone(value: str) -> str:
    """A time zone field's check: an IANA name the system's zone database knows."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"an IANA time zone such as UTC or Asia/Shanghai, not {value!r}") from None
    return value
