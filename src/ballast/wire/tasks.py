"""What the control plane and a gateway exchange about scheduled tasks' shards.

A gateway claims shards (`ShardClaim` in, `ShardCall`s out: everything it needs to make the call, so it reads
nothing else) and reports each one's outcome (`ShardOutcome`) until the control plane answers. A claim holds
a lease: a gateway that dies mid-call leaves its shard to be claimed again once the lease ends, under the same
idempotency key. Delivery to the app is therefore at least once; the outcome is recorded once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ballast.wire.message import StrictMessage
from ballast.wire.text import INT32_MAX, NAME_PATTERN
from ballast.wire.traffic import Tags

SHARD_HEADER = "x-ballast-shard"
SHARDS_HEADER = "x-ballast-shards"
IDEMPOTENCY_HEADER = "idempotency-key"
SERVED_BY_HEADER = "x-ballast-served-by"     # set by the gateway's HAProxy: the instance (server) that answered
CLAIM_MAX = 100

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]


class ShardClaim(StrictMessage):
    max: int = Field(10, ge=1, le=CLAIM_MAX, description="at most this many shards")


class ShardCall(StrictMessage):
    """One claimed shard: the call to make and how long the claim holds."""

    task: Name
    run_id: int = Field(ge=1, le=INT32_MAX)
    index: int = Field(ge=0)
    shards: int = Field(ge=1)
    service: Name
    path: str
    method: str
    tags: Tags = Field(default_factory=dict)
    timeout_seconds: int = Field(ge=1)
    retries: int = Field(ge=0)
    lease_until: float = Field(description="the control plane's clock; the lease's length is what counts")
    lease_seconds: float = Field(gt=0)
    idempotency_key: str


class ShardOutcome(StrictMessage):
    run_id: int = Field(ge=1, le=INT32_MAX)
    index: int = Field(ge=0, le=INT32_MAX)
    outcome: Literal["succeeded", "failed"]
    status_code: int | None = Field(None, ge=100, le=599, description="the last attempt's; none: no answer")
    duration_ms: float = Field(ge=0, le=86_400_000, description="from the first attempt to the last answer")
    attempts: int = Field(ge=1, le=100)
    instance: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,80}$")] | None = None
    error: str = Field("", max_length=500)
