"""How long to wait before trying again, as a value: it doubles after each failure up to a ceiling. Pure.

Use: wait `delay`, try, and on failure take `failed()` for the next wait; `reset()` after a success.

Every retry in Ballast (registering with the control plane, restarting an app or a sidecar, reconnecting a
long-poll) uses this one rule instead of its own arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Backoff:
    first: float
    ceiling: float
    stable_seconds: float | None = None   # a run at least this long forgets earlier failures (`after_run`)
    delay: float = field(default=-1.0)

    def __post_init__(self) -> None:
        if self.delay < 0:
            object.__setattr__(self, "delay", self.first)

    def failed(self) -> "Backoff":
        """The wait after one more failure."""
        return replace(self, delay=min(self.delay * 2, self.ceiling))

    def reset(self) -> "Backoff":
        return replace(self, delay=self.first)

    def after_run(self, seconds: float) -> "Backoff":
        """Something ran for `seconds` before it failed: a stable run forgets the failures before it."""
        if self.stable_seconds is not None and seconds >= self.stable_seconds:
            return self.reset()
        return self
