"""The base of every manifest model: frozen, strict about unknown fields, public names as aliases."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ballast.wire.text import NAME_PATTERN

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower-case DNS label")]


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
