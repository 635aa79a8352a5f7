"""Values that reach HAProxy's configuration text, and the only ways text gets there: checked or quoted.

A registry value can never inject a directive: names and addresses pass `safe`, matched text passes `quoted`
(HAProxy's strong quotes, inside which nothing is interpreted and which the wire models guarantee a value can
take). Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ballast.dataplane.request_stats import SERVICE_PREFIX, SUBSET_SEPARATOR

_SAFE = re.compile(r"^[A-Za-z0-9._:/~-]+$")
_QUOTABLE = re.compile(r"^[\x20-\x26\x28-\x7e]*$")


def safe(value: str) -> str:
    if not _SAFE.match(value):
        raise ValueError(f"{value!r} cannot be written into an HAProxy configuration")
    return value


def quoted(value: str) -> str:
    if not _QUOTABLE.match(value):
        raise ValueError(f"{value!r} cannot be quoted in an HAProxy configuration")
    return f"'{value}'"


def backend_name(service: str) -> str:
    return f"{SERVICE_PREFIX}{safe(service)}"


@dataclass(frozen=True)
class Address:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{safe(self.ip)}:{int(self.port)}"


@dataclass(frozen=True)
class Server:
    name: str          # the instance id
    address: Address
    backup: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class Backend:
    service: str
    servers: tuple[Server, ...]
    subset: str = ""     # a TrafficRule's subset of the service (rule_config.py); "" is the whole pool

    @property
    def name(self) -> str:
        return backend_name(self.service) + (f"{SUBSET_SEPARATOR}{safe(self.subset)}" if self.subset else "")
