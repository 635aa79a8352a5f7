"""Records rendered as API objects: apiVersion / kind / metadata / spec / status.

The services read the store and hand back frozen records; this is the one place that turns them into
the documents the API answers with. The CLI's `-o yaml|json` prints exactly these, so they are public API.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ballast.core.audit_chain import AuditRecord
from ballast.core.endpoints import EndpointRecord, pending_acks
from ballast.core.loopback import private_address
from ballast.core.manifests import API_VERSION
from ballast.core.nodes import Readiness
from ballast.core.placement import format_cpu, format_memory
from ballast.services.apps import AppRecord, RevisionRecord
from ballast.services.artifacts import ArtifactRecord
from ballast.core.audit_anchor import AnchorCheck
from ballast.services.audit_trail import ChainCheck
from ballast.services.endpoints import GatewayRecord
from ballast.services.instances import Change, Changes, InstanceRecord, Tombstone
from ballast.services.topology import CellRecord, NodeRecord


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _obj(kind: str, name: str, meta: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name, **meta}, "spec": spec, "status": status}


def cell(c: CellRecord) -> dict[str, Any]:
    return _obj("Cell", c.name, {"labels": c.labels, "creationTimestamp": iso(c.created_at),
                                 "resourceVersion": c.resource_version},
                c.spec, {"nodes": list(c.nodes)})


def node(n: NodeRecord) -> dict[str, Any]:
    return _obj("Node", n.name, {"labels": n.labels, "creationTimestamp": iso(n.registered_at),
                                 "resourceVersion": n.resource_version},
                {"cell": n.cell, "zone": n.zone, "ip": n.ip,
                 "capacity": {"cpu": format_cpu(n.cpu_millis), "memory": format_memory(n.memory_bytes)},
                 "metricsAddress": n.metrics_address},
                {"ready": n.ready, "state": n.lifecycle,
                 "stateSince": iso(n.lifecycle_since) if n.lifecycle_since is not None else None,
                 "stateReason": n.lifecycle_reason, "lastHeartbeat": iso(n.last_heartbeat),
                 "secondsSinceHeartbeat": round(n.seconds_since_heartbeat, 1), "instances": n.instances,
                 "agentVersion": n.agent_version, "cordoned": n.cordoned,
                 "conditions": None if n.conditions is None else {
                     **n.conditions, "reportedAt": iso(n.conditions.get("reportedAt"))}})


def app(a: AppRecord) -> dict[str, Any]:
    per_cell = {name: {"total": c.total, "ready": c.ready} for name, c in a.cells.items()}
    status: dict[str, Any] = {"latestRevision": a.latest_revision, "deployedRevision": a.deployed_revision,
                              "observedGeneration": a.generation,
                              "instances": sum(c.total for c in a.cells.values()),
                              "readyInstances": sum(c.ready for c in a.cells.values()), "cells": per_cell}
    if a.unplaced:
        status["unplaced"] = a.unplaced
    if a.message:
        status["message"] = a.message
    elif a.latest_revision != a.deployed_revision:
        status["message"] = f"revision {a.latest_revision} is recorded; instances run revision {a.deployed_revision}"
    return _obj("AppService", a.name, {"labels": a.labels, "generation": a.generation,
                                       "creationTimestamp": iso(a.created_at), "resourceVersion": a.resource_version},
                a.spec, status)


def revision(r: RevisionRecord) -> dict[str, Any]:
    return _obj("Revision", f"{r.app}-{r.number}", {"app": r.app, "number": r.number,
                                                    "creationTimestamp": iso(r.created_at)},
                {"template": r.template}, {"hash": r.hash, "deployed": r.deployed})


def instance(i: InstanceRecord) -> dict[str, Any]:
    return _obj("Instance", i.id, {"app": i.app, "creationTimestamp": iso(i.created_at),
                                   "resourceVersion": i.resource_version},
                {"app": i.app, "revision": i.revision, "node": i.node, "cell": i.cell, "desired": i.desired,
                 **({"group": i.group} if i.group else {})},
                {"node": i.node, "cell": i.cell, "zone": i.zone, "ip": i.ip, "port": i.port,
                 # what the agent reports running (the desired revision until it first reports); spec has the desired
                 "revision": i.running_revision if i.running_revision is not None else i.revision,
                 # null, not the last report, once its node stopped heartbeating: `readiness` says Unknown since when
                 "phase": i.phase, "ready": None if i.readiness.state is Readiness.UNKNOWN else i.ready,
                 "readiness": i.readiness.state.value, "readinessSince": iso(i.readiness.since),
                 "restarts": i.restarts,
                 "pid": i.pid, "message": i.message, "updated": iso(i.updated_at),
                 # The sidecar's outbound listener: on the node's loopback, for the instance alone.
                 "meshUrl": f"http://{private_address(i.ip)}:{i.mesh_port}" if i.mesh_port else None,
                 # What the agent has been told: the intent in spec, once the drain protocol allowed it.
                 "grantedRevision": i.granted_revision, "grantedDesired": i.granted_desired,
                 "lastDrain": i.drain})


def deleted_instance(t: Tombstone) -> dict[str, Any]:
    """A deleted instance as a watch reports it: the fields it can be filtered by, as they last were."""
    return _obj("Instance", t.id, {"app": t.app, "resourceVersion": t.resource_version, "deletionTimestamp": iso(t.deleted_at)},
                {"app": t.app, "revision": t.revision, "node": t.node, "cell": t.cell, "desired": t.desired},
                {"node": t.node, "cell": t.cell, "zone": None, "ip": None, "port": None, "revision": t.revision,
                 "phase": t.phase, "ready": t.ready, "restarts": None, "message": ""})


def change(c: Change) -> dict[str, Any]:
    obj = instance(c.instance) if c.instance is not None else deleted_instance(c.tombstone)  # type: ignore[arg-type]
    return {"type": c.type.value, "object": obj}


def list_metadata(resource_version: int | None = None, next_token: str | None = None) -> dict[str, Any]:
    """A list's `metadata`, as Kubernetes writes it: `continue` only when a next page exists; the store's
    version when the list was read (a string: an opaque version, for a watch to go on from)."""
    meta: dict[str, Any] = {}
    if next_token is not None:
        meta["continue"] = next_token
    if resource_version is not None:
        meta["resourceVersion"] = str(resource_version)
    return meta


def changes(found: Changes) -> dict[str, Any]:
    return {"events": [change(c) for c in found.changes], "metadata": list_metadata(found.resource_version)}


def endpoint(e: EndpointRecord, acked: dict[str, int], credentials: dict[str, str | None] | None = None) -> dict[str, Any]:
    pending = list(pending_acks(e, acked))  # a component deleted since routes nothing: neither list names it
    done = [k for k in e.required if k in acked and k not in pending]
    return _obj("Endpoint", e.id, {"app": e.service},
                {"service": e.service, "instance": e.id, "node": e.node, "cell": e.cell, "zone": e.zone,
                 "ip": e.ip, "port": e.port, "revision": e.revision},
                {"state": e.state.value, "generation": e.generation, "since": iso(e.since),
                 "acknowledgedBy": done, "pending": pending,
                 # the credential (token id) that sent each one's last acknowledgement
                 "acknowledgedWith": {k: (credentials or {}).get(k) for k in done},
                 "note": e.note})


def gateway(g: GatewayRecord) -> dict[str, Any]:
    return _obj("Gateway", g.name, {"creationTimestamp": iso(g.registered_at)},
                {"address": g.address, "metricsAddress": g.metrics_address},
                {"url": f"http://{g.address}", "acknowledgedGeneration": g.acked_generation,
                 "registryGeneration": g.registry_generation, "inSync": g.acked_generation >= g.registry_generation,
                 "appliedHash": g.applied_hash, "error": g.error, "lastSeen": iso(g.last_seen), "secondsSinceSeen": round(g.seconds_since_seen, 1),
                 "acknowledgedWith": g.acked_by})


def artifact(a: ArtifactRecord) -> dict[str, Any]:
    return {"digest": a.digest, "size": a.size, "createdAt": iso(a.created_at)}


def audit_record(r: AuditRecord) -> dict[str, Any]:
    return dict(vars(r))


def chain_check(c: ChainCheck) -> dict[str, Any]:
    """The chain's verdict; with the quoted records' mismatches when a report's records were checked."""
    breaks = [{"seq": b.seq, "problem": b.problem} for b in c.breaks]
    verdict = {"records": c.records, "ok": c.ok, "headHash": c.head_hash, "breaks": breaks,
               "checkpoints": None if c.anchor is None else anchor_check(c.anchor)}
    if c.checked is None:
        return verdict
    return {**verdict, "checked": c.checked, "mismatches": [{"seq": m.seq, "problem": m.problem} for m in c.mismatches]}


def anchor_check(a: AnchorCheck) -> dict[str, Any]:
    """The chain against the signed checkpoints (`checkpoints` of the verdict; null when the server signs none)."""
    last = None if a.last is None else {"seq": a.last.seq, "head": a.last.head, "time": a.last.time,
                                        "keyId": a.last.key_id}
    return {"lines": a.lines, "verified": a.verified, "last": last, "unanchored": a.unanchored,
            "problems": [{"seq": p.seq, "line": p.line, "problem": p.problem} for p in a.problems]}
