"""`ballast order ...`: approve, start and steer release orders; list them; export their evidence."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
import yaml
from rich.console import Group as RenderGroup
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ballast.cli.common import command, console
from ballast.client import Client

PHASE_STYLE = {"PendingApproval": "yellow", "Approved": "green", "Rejected": "red", "Running": "cyan",
               "Paused": "yellow", "RollingBack": "magenta", "Succeeded": "green", "RolledBack": "yellow"}
TERMINAL = {"Succeeded", "RolledBack", "Rejected"}


@click.group()
def order() -> None:
    """Release orders: multi-app change requests with approval, change windows and an audit report."""


def render_status(o: dict[str, Any]) -> RenderGroup:
    st = o["status"]
    head = Text.assemble((f"order {o['metadata']['name']}: ", "bold"), (st["phase"], f"bold {PHASE_STYLE.get(st['phase'], '')}"),
                         ("  EMERGENCY" if st["emergency"] else "", "bold red"),
                         f"  {o['spec']['title']}  (ticket {o['spec'].get('ticket') or '-'}, author {st['author']})")
    approvals = [a for a in st["approvals"] if a["valid"]]
    lines = [head, Text(f"reason: {st['reason']}" + (f"\nwaiting: {st['waiting']}" if st["waiting"] else "")),
             Text("approvals: " + (", ".join(f"{a['user']} ({'emergency ' if a['emergency'] else ''}{a['decision']})"
                                            for a in approvals) or "none") + f"; {st['approvalsRequired']} required")]
    table = Table(box=None, header_style="bold")
    for col in ("APP", "AFTER", "REVISION", "RELEASE", "PHASE", "GROUPS", "REASON"):
        table.add_column(col)
    for a in st["apps"]:
        rel = a["undo"] or a["release"]
        if a["unchanged"]:
            phase, groups, reason, rid = "Unchanged", "-", "already at the target revision", "-"
        elif rel is None:
            phase, groups, reason, rid = "Waiting", "-", "", "-"
        else:
            phase = rel["phase"] + (" (back)" if a["undo"] else "")
            groups, reason, rid = f"{rel['completedGroups']}/{rel['groups']}", rel["waiting"] or rel["reason"], str(rel["id"])
        frm = a["fromRevision"] if a["fromRevision"] is not None else "?"
        table.add_row(a["app"], ",".join(a["after"]) or "-", f"{frm} → {a['toRevision']}", rid,
                      Text(phase, style=PHASE_STYLE.get(phase.split()[0], "")), groups, reason[:70])
    return RenderGroup(*lines, table)


@order.command("status")
@click.argument("name")
@click.option("--watch", "-w", is_flag=True, help="redraw until the order finishes (Ctrl-C to stop watching)")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def status(client: Client, name: str, watch: bool, fmt: str) -> None:
    """The order's phase and each app's release, in one view."""
    o = await client.get(f"/v1/orders/{name}")
    if fmt != "table":
        console.out(json.dumps(o, indent=2) if fmt == "json" else yaml.safe_dump(o, sort_keys=False))
        return
    if not watch:
        console.print(render_status(o))
        return
    with Live(render_status(o), console=console, refresh_per_second=4) as live:
        while o["status"]["phase"] not in TERMINAL:
            await asyncio.sleep(1)
            o = await client.get(f"/v1/orders/{name}")
            live.update(render_status(o))


@order.command("approve")
@click.argument("name")
@click.option("--comment", default="", help="recorded with the approval")
@click.option("--emergency", is_flag=True, help="the extra approval an emergency start needs (emergency-approver role)")
@command
async def approve(client: Client, name: str, comment: str, emergency: bool) -> None:
    r = await client.post(f"/v1/orders/{name}/approve", {"comment": comment, "emergency": emergency})
    kind = "emergency approval" if emergency else "approval"
    console.print(f"order {name}: {kind} recorded; now {r['phase']} ({r['approvals']} of {r['required']} approvals)")


@order.command("reject")
@click.argument("name")
@click.option("--comment", required=True, help="why, for the author")
@command
async def reject(client: Client, name: str, comment: str) -> None:
    r = await client.post(f"/v1/orders/{name}/reject", {"comment": comment})
    console.print(f"order {name}: rejected; now {r['phase']}")


@order.command("start")
@click.argument("name")
@click.option("--emergency", is_flag=True, help="start outside the change windows (needs an emergency approval)")
@command
async def start(client: Client, name: str, emergency: bool) -> None:
    r = await client.post(f"/v1/orders/{name}/start", {"emergency": emergency})
    console.print(f"order {name}: {r['phase']}" + (" (EMERGENCY)" if r["emergency"] else ""))


def _action(verb: str) -> Any:
    @click.argument("name")
    @click.option("--expect-phase", help="act only if the order is in this phase (compare-and-set)")
    @command
    async def act(client: Client, name: str, expect_phase: str | None) -> None:
        r = await client.post(f"/v1/orders/{name}/{verb}", {"expectPhase": expect_phase})
        console.print(f"order {name}: {r['previousPhase']} → {r['phase']}")
    act.__doc__ = {"pause": "Pause the order and its in-flight releases at their next safe point.",
                   "resume": "Resume the order and its paused releases.",
                   "rollback": "Roll the whole order back, in reverse dependency order."}[verb]
    return order.command(verb)(act)


for _verb in ("pause", "resume", "rollback"):
    _action(_verb)


@order.command("list")
@click.option("--state", help="PendingApproval, Approved, Rejected, Running, Paused, RollingBack, Succeeded, RolledBack")
@click.option("--app", help="orders that change this app")
@click.option("--author")
@click.option("--since", help="created at or after (ISO 8601 date or date-time)")
@click.option("--until", help="created before")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def list_orders(client: Client, state: str | None, app: str | None, author: str | None, since: str | None,
                      until: str | None, fmt: str) -> None:
    """Orders with filters, and statistics over what matched."""
    params = {k: v for k, v in {"state": state, "app": app, "author": author, "since": since, "until": until}.items()
              if v is not None}
    answer = await client.get("/v1/orders", **params)
    if fmt != "table":
        console.out(json.dumps(answer, indent=2) if fmt == "json" else yaml.safe_dump(answer, sort_keys=False))
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "PHASE", "APPS", "AUTHOR", "CREATED", "DURATION", "TITLE"):
        table.add_column(col)
    for o in answer["items"]:
        st = o["status"]
        table.add_row(o["metadata"]["name"], st["phase"] + (" (emergency)" if st["emergency"] else ""),
                      ",".join(r["app"] for r in o["spec"]["releases"]), st["author"], st["createdAt"] or "-",
                      f"{st['durationSeconds']}s" if st["durationSeconds"] is not None else "-", o["spec"]["title"][:50])
    console.print(table)
    s = answer["stats"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:.0f}%"
    console.print(f"{s['orders']} order(s): " + (", ".join(f"{k} {v}" for k, v in sorted(s["byPhase"].items())) or "none")
                  + f"; finished {s['finished']}: success {pct(s['successRate'])}, rolled back {pct(s['rollbackRate'])}"
                  + f", median duration {s['medianDurationSeconds'] if s['medianDurationSeconds'] is not None else '-'}s")


@order.command("report")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="write to this file instead of standard output")
@command
async def report(client: Client, name: str, fmt: str, out: str | None) -> None:
    """The evidence: approvals, revisions and diffs, transitions, outcomes, and the audit-chain hashes covering it."""
    if fmt == "json":
        text = json.dumps(await client.get(f"/v1/orders/{name}/report"), indent=2) + "\n"
    else:
        text = (await client.get(f"/v1/orders/{name}/report", format="markdown")).decode("utf-8")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        console.print(f"report of order {name} written to {out}")
    else:
        console.out(text, highlight=False)
