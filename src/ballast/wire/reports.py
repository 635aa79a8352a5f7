"""What agents and gateways send the control plane: registration, instance status, acknowledgements.

These are request bodies, so the control plane refuses a field it does not know, and every number and
string is bounded by what the stores hold.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from ballast.wire.message import StrictMessage
from ballast.wire.text import COUNTER_MAX, INT32_MAX, NAME_PATTERN, Labels, StoredText, ip_port

InstancePhase = Literal["Pending", "Starting", "Running", "Unhealthy", "BackOff", "Failed", "Stopping", "Stopped"]


class NodeRegistration(StrictMessage):
    cell: str = Field(pattern=NAME_PATTERN, max_length=63)
    ip: str = Field(max_length=64)
    cpu_millis: int = Field(gt=0, le=10_000_000)
    memory_bytes: int = Field(gt=0, le=2**50)
    labels: Labels = Field(default_factory=dict)
    agent_version: StoredText = Field("", max_length=64)
    metrics_address: str | None = Field(None, max_length=128, description="IP:PORT of the agent's telemetry "
                                                                            "endpoint (/metrics, request metrics)")

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        return None if value is None else ip_port(value)


class GatewayRegistration(StrictMessage):
    address: str = Field(max_length=128, description="IP:PORT the gateway listens on")
    metrics_address: str | None = Field(None, max_length=128, description="IP:PORT of its telemetry endpoint")

    @field_validator("address", "metrics_address")
    @classmethod
    def _addresses(cls, value: str | None) -> str | None:
        return None if value is None else ip_port(value)


class DrainReport(StrictMessage):
    """What waiting for an instance's requests to finish achieved, before it was stopped."""

    revision: int = Field(ge=0, le=INT32_MAX)
    waited_seconds: float = Field(ge=0, le=86_400)
    inflight_at_stop: int = Field(ge=0, le=INT32_MAX)
    timed_out: bool
    at: float = Field(ge=0, le=2**40)


class InstanceReport(StrictMessage):
    id: StoredText = Field(max_length=80)
    phase: InstancePhase
    ready: bool
    pid: int | None = Field(None, ge=1, le=INT32_MAX)  # the columns are 32-bit integers
    port: int | None = Field(None, ge=1, le=65535)
    restarts: int = Field(ge=0, le=INT32_MAX)
    message: StoredText = Field("", max_length=2000)
    revision: int | None = Field(None, ge=1, le=INT32_MAX,
                                 description="the revision the running process was started with")
    mesh_port: int | None = Field(None, ge=1, le=65535, description="the sidecar's outbound listener")
    drain: DrainReport | None = Field(None, description="the last wait for in-flight requests before a stop")


class FailingSidecar(StrictMessage):
    instance: StoredText = Field(max_length=80)
    restarts: int = Field(ge=0, le=INT32_MAX, description="restarts within the agent's last minute")


class NodeConditions(StrictMessage):
    """The agent's report of its own health: what the node lifecycle controller judges degradation from."""

    clock: float = Field(ge=0, le=2**40, description="the agent's wall clock when it sent the report (epoch seconds)")
    data_dir_free_bytes: int = Field(ge=0, le=2**53)
    data_dir_total_bytes: int = Field(ge=0, le=2**53)
    failing_sidecars: list[FailingSidecar] = Field(default_factory=list, max_length=5000)
    clock_offset_seconds: float | None = Field(
        None, ge=-1e9, le=1e9, description="the agent's clock minus the control plane's, from its last report's round "
                                           "trip: the midpoint of send and answer against the time in the answer")
    clock_uncertainty_seconds: float | None = Field(None, ge=0, le=1e9, description="half that round trip")
    liveness_port: int | None = Field(None, ge=1, le=65535,
                                      description="where, on the node's IP, the agent answers the leader's probe")


class StatusReport(StrictMessage):
    instances: list[InstanceReport] = Field(default_factory=list, max_length=5000)
    conditions: NodeConditions | None = None
    # Grows with every report of a node, across agent restarts (seeded from the clock in microseconds): a report
    # that waited in a paused replica's socket and arrives after newer ones is recognised and changes nothing.
    sequence: int = Field(0, ge=0, le=COUNTER_MAX)


class Acknowledgement(StrictMessage):
    generation: int = Field(ge=0, le=COUNTER_MAX, description="the registry generation now in effect")
    applied_hash: StoredText = Field("", max_length=64, description="a digest of the configuration applied")
    error: StoredText = Field("", max_length=4000, description="why the last change could not be applied")
