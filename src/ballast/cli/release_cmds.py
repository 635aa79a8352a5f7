"""`ballast release ...`: plan, start, watch and steer grouped releases."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import click
from rich.console import Group as RenderGroup
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ballast.cli.common import command, console, print_as
from ballast.client import Client

TERMINAL = {"Succeeded", "Failed", "RolledBack"}
PHASE_STYLE = {"Running": "cyan", "Paused": "yellow", "RollingBack": "magenta", "Succeeded": "green",
               "Failed": "red", "RolledBack": "yellow"}


def strategy_options(fn: Any) -> Any:
    options = [
        click.option("--to-revision", type=click.IntRange(min=1), help="target revision (default: the newest)"),
        click.option("--beta-size", type=int, help="instances per cell in the beta group (0: none)"),
        click.option("--groups", type=int, help="number of groups, the beta group included"),
        click.option("--group-sizes", help="explicit per-cell sizes of each group, e.g. 1,2,2"),
        click.option("--pause", type=click.Choice(["manual", "auto", "none"]), help="between groups"),
        click.option("--pause-seconds", type=float, help="with --pause auto"),
        click.option("--max-unavailable-per-cell", type=int),
        click.option("--upgrade", type=click.Choice(["inPlace", "replace", "ordered"])),
        click.option("--progress-deadline", type=float, help="seconds an instance may take to become ready"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _body(to_revision: int | None, beta_size: int | None, groups: int | None, group_sizes: str | None,
          pause: str | None, pause_seconds: float | None, max_unavailable_per_cell: int | None, upgrade: str | None,
          progress_deadline: float | None) -> dict[str, Any]:
    sizes = None
    if group_sizes:
        try:
            sizes = [int(x) for x in group_sizes.split(",")]
        except ValueError:
            raise click.BadParameter(f"{group_sizes!r}: expected comma-separated whole numbers", param_hint="--group-sizes")
    strategy = {"betaSize": beta_size, "groups": groups, "groupSizes": sizes, "pause": pause,
                "pauseSeconds": pause_seconds, "maxUnavailablePerCell": max_unavailable_per_cell, "upgrade": upgrade,
                "progressDeadlineSeconds": progress_deadline}
    return {"toRevision": to_revision, "strategy": {k: v for k, v in strategy.items() if v is not None}}


def render_plan(p: dict[str, Any]) -> Table:
    table = Table(title=f"{p.get('app')}: revision {p['fromRevision']} → {p['toRevision']}", box=None, header_style="bold")
    for col in ("GROUP", "CELL", "INSTANCES"):
        table.add_column(col)
    for g in p["groups"]:
        by_cell: dict[str, list[str]] = {}
        for s in g["slots"]:
            by_cell.setdefault(s["cell"], []).append(s["instance"])
        if not by_cell:
            table.add_row(g["name"], "-", "(empty)")
        for cell, ids in sorted(by_cell.items()):
            table.add_row(g["name"], cell, " ".join(ids))
    return table


def render_status(s: dict[str, Any]) -> RenderGroup:
    style = PHASE_STYLE.get(s["phase"], "white")
    kind = "scale release" if s.get("kind") == "scale" else "release"
    head = Text.assemble((f"{kind} {s['id']} of {s['app']}: ", "bold"), (s["phase"], f"bold {style}"),
                         f"  revision {s['fromRevision']} → {s['toRevision']}",
                         f"  ({s['direction']}{', fast' if s['fast'] else ''})  elapsed {s['elapsedSeconds']}s")
    why = Text(f"reason: {s['reason']}" + (f"\nwaiting: {s['waiting']}" if s["waiting"] else ""))
    cells = sorted({c for g in s["groups"] for c in g["cells"]})
    table = Table(box=None, header_style="bold")
    table.add_column("GROUP")
    for c in cells:
        table.add_column(f"{c} done/in progress/waiting")
    for g in s["groups"]:
        row = [g["name"]]
        for c in cells:
            n = g["cells"].get(c)
            if not n:
                row.append("-")
                continue
            total = sum(n.values())
            bar = "█" * n["done"] + "▒" * (n["in progress"] + n.get("failed", 0)) + "·" * n["waiting"]
            failed = f" {n['failed']} failed" if n.get("failed") else ""
            row.append(f"{bar} {n['done']}/{n['in progress']}/{n['waiting']} of {total}{failed}")
        table.add_row(*row)
    trouble = [i for g in s["groups"] for i in g["instances"] if i["state"] == "failed"]
    parts: list[Any] = [head, why, table]
    for t in trouble:
        parts.append(Text(f"  ✗ {t['reason']}", style="red"))
    for e in s.get("events", []):
        if e["action"] == "drain-timeout":
            d = e["detail"]
            parts.append(Text(f"  ⚠ {d['instance']} was stopped with {d['inflightAtStop']} request(s) in flight: "
                              f"the drain timeout ({d['waitedSeconds']:g}s) ran out", style="yellow"))
    return RenderGroup(*parts)


@click.group()
def release() -> None:
    """Grouped, cell-aware releases: plan, start, status, pause, resume, rollback, history."""


@release.command("plan")
@click.argument("app")
@strategy_options
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def plan_cmd(client: Client, app: str, fmt: str, **flags: Any) -> None:
    """Show which instance goes in which group, before anything changes."""
    p = await client.post(f"/v1/apps/{app}/releases/plan", _body(**flags))
    print_as(p, fmt, render_plan)


@release.command("start")
@click.argument("app")
@strategy_options
@command
async def start_cmd(client: Client, app: str, **flags: Any) -> None:
    """Start releasing APP to a revision, group by group."""
    r = await client.post(f"/v1/apps/{app}/releases", _body(**flags))
    console.print(f"release {r['id']} of {app} started: revision {r['fromRevision']} → {r['toRevision']}, "
                  f"{len(r['groups'])} group(s)")
    console.print(render_plan({**r, "app": app}))
    console.print(f"follow it: ballast release status {app} --watch")


@release.command("status")
@click.argument("app")
@click.option("--watch", is_flag=True, help="redraw until the release ends")
@click.option("--id", "release_id", type=int, help="an older release (default: the newest)")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def status_cmd(client: Client, app: str, watch: bool, release_id: int | None, fmt: str) -> None:
    """Live progress per group and cell, the phase and why it waits."""
    s = await client.get(f"/v1/apps/{app}/release", id=release_id)
    if not watch:
        print_as(s, fmt, render_status)
        return
    with Live(render_status(s), console=console, refresh_per_second=4) as live:
        while s["phase"] not in TERMINAL:
            await asyncio.sleep(1.0)
            s = await client.get(f"/v1/apps/{app}/release", id=release_id)
            live.update(render_status(s))


def _action(name: str, help_text: str, with_fast: bool = False) -> None:
    @click.argument("app")
    @click.option("--expect-phase", help="act only if the release is in this phase (else 409)")
    @command
    async def act(client: Client, app: str, expect_phase: str | None, fast: bool = False) -> None:
        r = await client.post(f"/v1/apps/{app}/release/{name}", {"fast": fast, "expectPhase": expect_phase})
        console.print(f"release {r['id']} of {app}: {r['previousPhase']} → {r['phase']}")

    act.__doc__ = help_text
    if with_fast:
        act = click.option("--fast", is_flag=True, help="roll every cell back at once (emergencies)")(act)
    release.command(name)(act)


_action("pause", "Stop at the next safe point (instances already changing finish).")
_action("resume", "Continue a paused release.")
_action("rollback", "Return every updated instance to the previous revision, newest group first.", with_fast=True)


@release.command("history")
@click.argument("app")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def history_cmd(client: Client, app: str, fmt: str) -> None:
    """Every release of APP: who did what, when, from/to, outcome, duration."""
    items = (await client.get(f"/v1/apps/{app}/releases"))["items"]
    if fmt != "table":
        print_as({"items": items}, fmt, None)
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "FROM→TO", "OUTCOME", "STARTED BY", "STARTED", "DURATION", "ACTIONS"):
        table.add_column(col)
    for r in items:
        actions = "; ".join(f"{e['action']} by {e['actor']} at {_ts(e['ts'])}" for e in r["events"])
        table.add_row(str(r["id"]), f"{r['fromRevision']}→{r['toRevision']}", r["phase"], r["createdBy"],
                      _ts(r["startedAt"]), f"{r['durationSeconds']}s" if r["durationSeconds"] is not None else "-", actions)
    console.print(table)


def _ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S")


