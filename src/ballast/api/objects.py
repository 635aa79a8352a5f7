"""Rows rendered as API objects: apiVersion / kind / metadata / spec / status.

The CLI's `-o yaml|json` prints exactly these, so they are public API.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ballast.core.manifests import API_VERSION
from ballast.core.placement import format_cpu, format_memory
from ballast.services.registry import NODE_TIMEOUT_SECONDS


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _obj(kind: str, name: str, meta: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name, **meta}, "spec": spec, "status": status}


def cell(row: Any, node_names: list[str]) -> dict[str, Any]:
    return _obj("Cell", row.name, {"labels": row.labels, "creationTimestamp": iso(row.created_at),
                                   "resourceVersion": row.resource_version},
                row.spec, {"nodes": node_names})


def node(row: Any, now: float, instance_count: int) -> dict[str, Any]:
    age = now - row.last_heartbeat
    return _obj("Node", row.name, {"labels": row.labels, "creationTimestamp": iso(row.registered_at),
                                   "resourceVersion": row.resource_version},
                {"cell": row.cell, "zone": row.zone, "ip": row.ip,
                 "capacity": {"cpu": format_cpu(row.cpu_millis), "memory": format_memory(row.memory_bytes)},
                 "metricsAddress": row.metrics_address},
                {"ready": age < NODE_TIMEOUT_SECONDS, "lastHeartbeat": iso(row.last_heartbeat),
                 "secondsSinceHeartbeat": round(age, 1), "instances": instance_count,
                 "agentVersion": row.agent_version, "cordoned": row.cordoned})


def app(row: Any, per_cell: dict[str, dict[str, int]]) -> dict[str, Any]:
    total = sum(c["total"] for c in per_cell.values())
    ready = sum(c["ready"] for c in per_cell.values())
    status: dict[str, Any] = {"latestRevision": row.latest_revision, "deployedRevision": row.deployed_revision,
                              "observedGeneration": row.generation, "instances": total, "readyInstances": ready,
                              "cells": per_cell}
    if row.status.get("unplaced"):
        status["unplaced"] = row.status["unplaced"]
    if row.status.get("message"):
        status["message"] = row.status["message"]
    elif row.latest_revision != row.deployed_revision:
        status["message"] = f"revision {row.latest_revision} is recorded; instances run revision {row.deployed_revision}"
    return _obj("AppService", row.name, {"labels": row.labels, "generation": row.generation,
                                         "creationTimestamp": iso(row.created_at), "resourceVersion": row.resource_version},
                row.spec, status)


def revision(row: Any, deployed: int | None) -> dict[str, Any]:
    return _obj("Revision", f"{row.app}-{row.number}", {"app": row.app, "number": row.number,
                                                        "creationTimestamp": iso(row.created_at)},
                {"template": row.template}, {"hash": row.hash, "deployed": row.number == deployed})


def instance(row: Any) -> dict[str, Any]:
    return _obj("Instance", row.id, {"app": row.app, "creationTimestamp": iso(row.created_at),
                                     "resourceVersion": row.resource_version},
                {"app": row.app, "revision": row.revision, "node": row.node, "cell": row.cell, "desired": row.desired},
                {"node": row.node, "cell": row.cell, "zone": row.zone, "ip": row.ip, "port": row.port,
                 # what the agent reports running (the desired revision until it first reports); spec has the desired
                 "revision": row.running_revision if row.running_revision is not None else row.revision,
                 "phase": row.phase, "ready": row.ready, "restarts": row.restarts,
                 "pid": row.pid, "message": row.message, "updated": iso(row.updated_at),
                 "meshUrl": f"http://{row.ip}:{row.mesh_port}" if row.mesh_port else None,
                 # What the agent has been told: the intent in spec, once the drain protocol allowed it.
                 "grantedRevision": row.granted_revision, "grantedDesired": row.granted_desired,
                 "lastDrain": row.drain})


def endpoint(row: Any, acked: dict[str, int]) -> dict[str, Any]:
    required = [k for k in row.required or () if k in acked]  # a component deleted since routes nothing
    acknowledged = [k for k in required if acked[k] >= row.generation]
    return _obj("Endpoint", row.id, {"app": row.service},
                {"service": row.service, "instance": row.id, "node": row.node, "cell": row.cell, "zone": row.zone,
                 "ip": row.ip, "port": row.port, "revision": row.revision},
                {"state": row.state, "generation": row.generation, "since": iso(row.since),
                 "acknowledgedBy": acknowledged, "pending": [k for k in required if k not in acknowledged],
                 "note": row.note})


def gateway(row: Any, registry_generation: int, now: float) -> dict[str, Any]:
    return _obj("Gateway", row.name, {"creationTimestamp": iso(row.registered_at)},
                {"address": row.address, "metricsAddress": row.metrics_address},
                {"url": f"http://{row.address}", "acknowledgedGeneration": row.acked_generation,
                 "registryGeneration": registry_generation, "inSync": row.acked_generation >= registry_generation,
                 "appliedHash": row.applied_hash, "error": row.error, "lastSeen": iso(row.last_seen), "secondsSinceSeen": round(now - row.last_seen, 1)})
