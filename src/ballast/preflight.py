"""Preflight for `ballast up`: say clearly which binary is missing before starting anything."""

from __future__ import annotations

import shutil

from rich.console import Console

from ballast.dataplane.haproxy import find_binary
from ballast.errors import BallastError


class MissingBinary(BallastError):
    status = 1


def require_binaries(console: Console, names: tuple[str, ...] = ("python3",)) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise MissingBinary(f"missing binaries on PATH: {', '.join(missing)} (install them, e.g. with 'make setup')")
    find_binary()  # sidecars and the gateway are HAProxy: say so now, naming it, rather than in every agent log
