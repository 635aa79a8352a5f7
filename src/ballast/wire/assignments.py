"""What a node runs (`GET /v1/nodes/{node}/assignments`): each instance the drain protocol granted it.

`Template` is a revision's template exactly as stored (the manifest's `spec.template`, whose policy checks
live in core/manifests.py on top of these fields and bounds); `DrainSettings` is the part of the app's
traffic settings the agent needs to stop an instance. Their defaults are the platform's, written once here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ballast.wire.message import Message, StrictMessage
from ballast.wire.text import DIGEST_PATTERN

DEFAULT_GRACE_PERIOD_SECONDS = 10.0      # SIGTERM → SIGKILL
DEFAULT_DRAIN_TIMEOUT_SECONDS = 30.0     # the longest wait for in-flight requests before a stop
ARG_MAX = 32_768                         # one argument or environment value, in characters
DEFAULT_FAILURE_THRESHOLD = 3            # failed health checks in a row before an instance is unhealthy


class HealthCheck(StrictMessage):
    path: str = Field(pattern=r"^/", max_length=2048, description="an HTTP path starting with /")
    period_seconds: float = Field(2.0, gt=0, le=3600)
    timeout_seconds: float = Field(1.0, gt=0, le=600)
    failure_threshold: int = Field(DEFAULT_FAILURE_THRESHOLD, ge=1, le=100)
    initial_delay_seconds: float = Field(0.0, ge=0, le=3600)


class Resources(StrictMessage):
    cpu: Annotated[str, Field(max_length=32)] | int | float = "100m"
    memory: Annotated[str, Field(max_length=32)] | int = "64Mi"


class Template(StrictMessage):
    artifact: str | None = Field(None, pattern=DIGEST_PATTERN)
    command: list[Annotated[str, Field(min_length=1, max_length=ARG_MAX)]] = Field(min_length=1, max_length=100)
    args: list[Annotated[str, Field(max_length=ARG_MAX)]] = Field(default_factory=list, max_length=1000)
    env: dict[Annotated[str, Field(max_length=256)], Annotated[str, Field(max_length=ARG_MAX)]] = Field(
        default_factory=dict, max_length=1000)
    working_dir: str | None = Field(None, min_length=1, max_length=4096)
    port: int | None = Field(None, ge=1024, le=65535, description="fixed listen port; default: assigned by the agent")
    health_check: HealthCheck | None = None
    resources: Resources = Field(default_factory=Resources)
    grace_period_seconds: float = Field(DEFAULT_GRACE_PERIOD_SECONDS, ge=0, le=3600)


class DrainSettings(StrictMessage):
    drain: bool = Field(True, description="drain before an instance stops or changes (off only to measure the "
                                          "difference)")
    drain_timeout_seconds: float = Field(DEFAULT_DRAIN_TIMEOUT_SECONDS, gt=0, le=3600)


class Assignment(Message):
    id: str
    app: str
    revision: int                                   # granted
    desired: Literal["running", "deleted"]          # granted
    cell: str
    zone: str
    ip: str
    port: int | None                                # the endpoint port, None: the agent picks one
    template: Template | None                       # None: the revision is gone (the instance only stops)
    traffic: DrainSettings = Field(default_factory=DrainSettings)
    group: str = ""                                 # its isolation group's code; "": the app's own


class Assignments(Message):
    fingerprint: str          # changes whenever any assignment of the node changes
    instances: tuple[Assignment, ...] = ()
