"""How the CLI prints objects: tables for people, YAML/JSON for machines."""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Callable

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

Row = Callable[[dict[str, Any]], list[str]]
_KEPT = {"\n", "\t"}


def escape_controls(text: str) -> str:
    """`text` with every control and format character written as an escape (\\x1b, \\u202e): stored values
    (request paths, token names, messages) reach the terminal as text, never as commands to it."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _KEPT or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "".join(out)


COLUMNS: dict[str, tuple[list[str], Row]] = {
    "cells": (["NAME", "ZONE", "NODES"],
              lambda o: [o["metadata"]["name"], o["spec"]["zone"], ",".join(o["status"]["nodes"]) or "-"]),
    "nodes": (["NAME", "CELL", "ZONE", "IP", "READY", "STATE", "INSTANCES", "CPU", "MEMORY", "HEARTBEAT"],
              lambda o: [o["metadata"]["name"], o["spec"]["cell"], o["spec"]["zone"], o["spec"]["ip"],
                         str(o["status"]["ready"]),
                         o["status"].get("state", "Ready") + (",Cordoned" if o["status"].get("cordoned") else ""),
                         str(o["status"]["instances"]), o["spec"]["capacity"]["cpu"],
                         o["spec"]["capacity"]["memory"], f"{o['status']['secondsSinceHeartbeat']}s ago"]),
    "apps": (["NAME", "READY", "REVISION", "LATEST", "CELLS", "MESSAGE"],
             lambda o: [o["metadata"]["name"], f"{o['status']['readyInstances']}/{o['status']['instances']}",
                        str(o["status"]["deployedRevision"]), str(o["status"]["latestRevision"]),
                        " ".join(f"{c}:{v['ready']}/{v['total']}" for c, v in sorted(o["status"]["cells"].items())),
                        _app_message(o)]),
    "instances": (["ID", "GROUP", "NODE", "CELL", "ADDRESS", "REVISION", "PHASE", "READY", "RESTARTS", "MESSAGE"],
                  lambda o: [o["metadata"]["name"], o["spec"].get("group") or "-", o["status"]["node"], o["status"]["cell"],
                             f"{o['status']['ip'] or '-'}:{o['status']['port'] or '-'}", str(o["status"]["revision"]),
                             o["status"]["phase"] + (" (deleting)" if o["spec"]["desired"] == "deleted" else ""),
                             _instance_ready(o), _or_dash(o["status"]["restarts"]), o["status"]["message"][:60]]),
    "revisions": (["REVISION", "HASH", "CREATED", "DEPLOYED"],
                  lambda o: [str(o["metadata"]["number"]), o["status"]["hash"][:19], o["metadata"]["creationTimestamp"],
                             "yes" if o["status"]["deployed"] else ""]),
    "endpoints": (["INSTANCE", "CELL", "ADDRESS", "REVISION", "STATE", "GENERATION", "ACKNOWLEDGED", "PENDING", "NOTE"],
                  lambda o: [o["metadata"]["name"], o["spec"]["cell"], f"{o['spec']['ip']}:{o['spec']['port']}",
                             str(o["spec"]["revision"]), o["status"]["state"], str(o["status"]["generation"]),
                             f"{len(o['status']['acknowledgedBy'])}/"
                             f"{len(o['status']['acknowledgedBy']) + len(o['status']['pending'])}",
                             ",".join(o["status"]["pending"]) or "-", o["status"]["note"][:60]]),
    "gateways": (["NAME", "URL", "IN SYNC", "ACKNOWLEDGED", "REGISTRY", "SEEN", "ERROR"],
                 lambda o: [o["metadata"]["name"], o["status"]["url"], str(o["status"]["inSync"]),
                            str(o["status"]["acknowledgedGeneration"]), str(o["status"]["registryGeneration"]),
                            f"{o['status']['secondsSinceSeen']}s ago", o["status"]["error"][:60]]),
    "users": (["NAME", "ROLES"],
              lambda o: [o["name"], ", ".join(b["role"] + (f"({','.join(b['apps'])})" if b["apps"] else "") for b in o["bindings"])]),
    "tokens": (["ID", "USER", "NAME", "EXPIRES", "REVOKED"],
               lambda o: [o["id"], o["user"], o["name"], str(o["expiresAt"] or "never"), "yes" if o["revokedAt"] else ""]),
    "audit": (["SEQ", "TIME", "ACTOR", "ACTION", "RESOURCE", "RESULT"],
              lambda o: [str(o["seq"]), o["ts"][:19], o["actor"], o["action"], o["resource"], o["result"]]),
    "orders": (["NAME", "PHASE", "APPS", "AUTHOR", "CREATED", "TITLE"],
               lambda o: [o["metadata"]["name"], o["status"]["phase"] + (" (emergency)" if o["status"]["emergency"] else ""),
                          ",".join(r["app"] for r in o["spec"]["releases"]), o["status"]["author"],
                          o["status"]["createdAt"] or "-", o["spec"]["title"][:50]]),
    "changewindows": (["NAME", "TIME ZONE", "APPS", "ALLOWED", "FREEZES", "OPEN NOW"],
                      lambda o: [o["metadata"]["name"], o["spec"]["timeZone"], ",".join(o["spec"]["apps"] or ["*"]),
                                 "; ".join(",".join(r["days"]) + f" {r['start']}-{r['end']}" for r in o["spec"]["allowed"])
                                 or "any time", str(len(o["spec"]["freezes"])),
                                 "yes" if o["status"]["openNow"] else "no: " + "; ".join(o["status"]["why"])[:60]]),
    "artifacts": (["DIGEST", "SIZE", "CREATED"], lambda o: [o["digest"], str(o["size"]), o["createdAt"]]),
    "trafficrules": (["NAME", "SERVICE", "FROM", "ROUTES", "GENERATION", "IN EFFECT", "PENDING", "OWNER"],
                     lambda o: [o["name"], o["spec"]["service"],
                                ",".join((o["spec"].get("from") or {}).get("apps") or ["*"]),
                                "; ".join(_route_summary(r) for r in o.get("routes") or []),
                                str(o["generation"]), "yes" if o["inEffect"] else "no",
                                ",".join(o["pending"]) or "-", o["owner"] or "-"]),
    "isolationgroups": (["NAME", "APP", "CODE", "READY", "CELLS", "CONVERGENCE", "STRESS", "IN EFFECT", "UNPLACED"],
                        lambda o: [o["name"], o["app"], o["code"], f"{o['ready']}/{o['wanted']}",
                                   " ".join(f"{c}:{v['ready']}/{v['wanted']}" for c, v in o["cells"].items()),
                                   o["convergence"], "yes" if o["stress"] else "no", "yes" if o["inEffect"] else "no",
                                   "; ".join(f"{u['cell']}: {u['count']} ({u['reason']})"
                                             for u in (o["status"] or {}).get("unplaced", []))[:80] or "-"]),
    "coloringrules": (["NAME", "AT", "TAGS", "GENERATION", "IN EFFECT", "PENDING"],
                      lambda o: [o["name"], ",".join(o["spec"]["at"]["apps"]),
                                 ",".join(f"{k}={v}" for k, v in o["spec"]["tags"].items()), str(o["generation"]),
                                 "yes" if o["inEffect"] else "no", ",".join(o["pending"]) or "-"]),
    "scheduledtasks": (["NAME", "SCHEDULE", "TIME ZONE", "TARGET", "SHARDS", "POLICY", "SUSPENDED", "ACTIVE", "NEXT",
                        "LAST RUN"],
                       lambda o: [o["metadata"]["name"], o["spec"]["schedule"], o["spec"]["timeZone"],
                                  f"{o['spec']['target']['method']} {o['spec']['target']['service']}"
                                  f"{o['spec']['target']['path']}", str(o["spec"]["shards"]),
                                  o["spec"]["concurrencyPolicy"], "yes" if o["spec"]["suspend"] else "no",
                                  str(o["status"]["activeRuns"]), o["status"]["nextScheduleTime"] or "-",
                                  _last_run(o["status"]["lastRun"])]),
    "taskruns": (["RUN", "TRIGGER", "SCHEDULED FOR", "STATE", "SHARDS", "BY", "FINISHED", "REASON"],
                 lambda o: [str(o["id"]), o["trigger"], o["scheduledFor"] or "-", o["state"],
                            " ".join(f"{k}:{v}" for k, v in sorted(o["shardStates"].items())) or "-", o["actor"],
                            o["finishedAt"] or "-", o["reason"][:70]]),
    "taskshards": (["RUN", "SHARD", "STATE", "ATTEMPTS", "STATUS", "DURATION", "INSTANCE", "GROUP", "ERROR"],
                   lambda o: [str(o["run"]), str(o["index"]), o["state"], str(o["attempts"]),
                              str(o["statusCode"] or "-"),
                              "-" if o["durationMs"] is None else f"{o['durationMs']:.0f} ms", o["instance"] or "-",
                              "-" if o["group"] is None else (o["group"] or "default"), o["error"][:60]]),
}


def _last_run(run: dict[str, Any] | None) -> str:
    return "-" if run is None else f"{run['id']} ({run['trigger']}, {run['state']})"


def shard_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's shards, one row each, for `get taskruns -o wide` and `describe taskrun`."""
    return [{"run": r["id"], **s} for r in runs for s in r["items"]]


def _route_summary(route: dict[str, Any]) -> str:
    """testers -> revision 2 (2 ready); split -> revision 1 x999 (3 ready), revision 2 x1 (0 ready: fallback)"""
    sides = [f"{d['subset']}" + (f" x{d['weight']}" if len(route["to"]) > 1 else "")
             + f" ({d['readyEndpoints']} ready" + (": falls back" if d["fallback"] else "") + ")" for d in route["to"]]
    return f"{route['name']} -> " + ", ".join(sides)


def _or_dash(value: Any) -> str:
    """A value, or "-" where there is none (a deleted instance, as a watch reports it, has no restarts)."""
    return "-" if value is None else str(value)


def _instance_ready(o: dict[str, Any]) -> str:
    """True / False as the agent reported; Unknown (since the node's last heartbeat) once the node went silent."""
    status = o["status"]
    if status.get("readiness") == "Unknown":
        since = status.get("readinessSince") or ""
        return f"Unknown since {since[11:19]}" if since else "Unknown"
    return str(status["ready"])


def _app_message(o: dict[str, Any]) -> str:
    unplaced = o["status"].get("unplaced") or []
    if unplaced:
        return "; ".join(f"{u['count']} unplaced in {u['cell']}: {u['reason']}" for u in unplaced)
    return str(o["status"].get("message", ""))


def render(kind: str, items: list[dict[str, Any]], fmt: str, console: Console, *, single: bool = False,
           header: bool = True) -> None:
    if fmt == "json":
        console.out(json.dumps(items[0] if single else {"items": items}, indent=2), highlight=False)
    elif fmt == "yaml":
        console.out(yaml.safe_dump(items[0] if single else {"items": items}, sort_keys=False), highlight=False)
    else:
        headers, row = COLUMNS[kind]
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", show_header=header)
        for h in headers:
            table.add_column(h, overflow="fold")
        for item in items:
            table.add_row(*(Text(escape_controls(cell)) for cell in row(item)))  # a stored value holds no markup
        console.print(table)
