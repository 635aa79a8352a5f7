"""Canonical JSON and content digests: one definition used by revisions, audit and artifacts."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of `value`, as `sha256:<hex>`; None digests to None."""
    if value is None:
        return ""
    return "sha256:" + hashlib.sha256(canonical_json(value).encode()).hexdigest()
