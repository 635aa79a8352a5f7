"""Rules for text both stores can hold and both planes agree on: names, addresses, storable strings."""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator, Field

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
INT32_MAX = 2**31 - 1     # what an integer column holds on every store
# The bound of a sequence or generation (64-bit columns): 2**53, the largest integer every JSON reader (a
# float64) holds exactly, so a client's schema check and ours agree at the edge. No counter gets near it.
COUNTER_MAX = 2**53


def storable(text: str) -> bool:
    """No NUL characters and no unpaired surrogates (a "\\ud800" JSON escape decodes to one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def require_storable(text: str) -> str:
    if not storable(text):
        raise ValueError("text without NUL characters or unpaired surrogates")
    return text


def ip_port(value: str) -> str:
    """IP:PORT (an IPv6 address in brackets), as components register their addresses; ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("IP:PORT with a port in 1..65535")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(f"IP:PORT with an IP address, not {host!r}") from None
    return value


# For request fields outside manifests (agent reports, token names): text both stores can hold. The schema says
# "no NUL"; an unpaired surrogate has no JSON Schema spelling (it is no character), the validator refuses it too.
StoredText = Annotated[str, AfterValidator(require_storable), Field(json_schema_extra={"pattern": "^[^\\x00]*$"})]

# Labels, on manifests and node registrations: a bounded map of bounded strings (the stores keep them as JSON).
Labels = Annotated[dict[Annotated[StoredText, Field(max_length=253)], Annotated[StoredText, Field(max_length=1000)]],
                   Field(max_length=64)]
