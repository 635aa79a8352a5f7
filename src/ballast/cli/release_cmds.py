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
        click.option("--verify-window", type=float, help="verify each group over this many seconds of traffic"),
        click.option("--min-requests", type=int, help="fewer requests to the new revision: inconclusive (pause)"),
        click.option("--max-error-rate", type=float, help="percent of the new revision's requests that may fail"),
        click.option("--max-error-increase", type=float,
                     help="percentage points the error rate may exceed the old revision's"),
        click.option("--max-p99-ms", type=float, help="the new revision's p99 response time, at most (ms)"),
        click.option("--max-p99-ratio", type=float, help="the new revision's p99, at most this times the old one's"),
        click.option("--on-failure", type=click.Choice(["pause", "rollback"]), help="when a group fails verification"),
        click.option("--verify-webhook", "verify_webhooks", multiple=True,
                     help="URL POSTed to after each group's window; must answer 2xx (repeatable)"),
        click.option("--no-verify", is_flag=True, help="release without verification, whatever the app declares"),
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
          progress_deadline: float | None, verify_window: float | None = None, min_requests: int | None = None,
          max_error_rate: float | None = None, max_error_increase: float | None = None,
          max_p99_ms: float | None = None, max_p99_ratio: float | None = None, on_failure: str | None = None,
          verify_webhooks: tuple[str, ...] = (), no_verify: bool = False) -> dict[str, Any]:
    sizes = None
    if group_sizes:
        try:
            sizes = [int(x) for x in group_sizes.split(",")]
        except ValueError:
            raise click.BadParameter(f"{group_sizes!r}: expected comma-separated whole numbers", param_hint="--group-sizes")
    verify = {"windowSeconds": verify_window, "minRequests": min_requests, "maxErrorRate": max_error_rate,
              "maxErrorRateIncrease": max_error_increase, "maxP99Ms": max_p99_ms, "maxP99Ratio": max_p99_ratio,
              "onFailure": on_failure, "webhooks": [{"url": u} for u in verify_webhooks] or None}
    verify = {k: v for k, v in verify.items() if v is not None}
    if no_verify and verify:
        raise click.UsageError("--no-verify contradicts " + ", ".join(sorted(verify)))
    strategy = {"betaSize": beta_size, "groups": groups, "groupSizes": sizes, "pause": pause,
                "pauseSeconds": pause_seconds, "maxUnavailablePerCell": max_unavailable_per_cell, "upgrade": upgrade,
                "progressDeadlineSeconds": progress_deadline, "verify": verify or None,
                "noVerify": True if no_verify else None}
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
    kind = {"scale": "scale release", "rollback": "rollback release"}.get(s.get("kind", ""), "release")
    head = Text.assemble((f"{kind} {s['id']} of {s['app']}: ", "bold"), (s["phase"], f"bold {style}"),
                         f"  revision {s['fromRevision']} → {s['toRevision']}",
                         f"  ({s['direction']}{', fast' if s['fast'] else ''})  elapsed {s['elapsedSeconds']}s")
    why = Text(f"reason: {s['reason']}" + (f"\nwaiting: {s['waiting']}" if s["waiting"] else ""))
    cells = sorted({c for g in s["groups"] for c in g["cells"]})
    verifying = bool((s.get("strategy") or {}).get("verify")) or any("verification" in g for g in s["groups"])
    table = Table(box=None, header_style="bold")
    table.add_column("GROUP")
    for c in cells:
        table.add_column(f"{c} done/in progress/waiting")
    if verifying:
        table.add_column("VERIFICATION")
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
        if verifying:
            row.append(_verification_cell(g.get("verification")))
        table.add_row(*row)
    trouble = [i for g in s["groups"] for i in g["instances"] if i["state"] == "failed"]
    parts: list[Any] = [head, why, table]
    for t in trouble:
        parts.append(Text(f"  ✗ {t['reason']}", style="red"))
    for g in s["groups"]:
        if g.get("verification", {}).get("checks"):
            parts.extend(_verdict_lines(g["name"], g["verification"]))
    for e in s.get("events", []):
        if e["action"] == "drain-timeout":
            d = e["detail"]
            parts.append(Text(f"  ⚠ {d['instance']} was stopped with {d['inflightAtStop']} request(s) in flight: "
                              f"the drain timeout ({d['waitedSeconds']:g}s) ran out", style="yellow"))
    return RenderGroup(*parts)


VERDICT_STYLE = {"passed": "green", "failed": "bold red", "inconclusive": "yellow", "verifying": "cyan",
                 "abandoned": "dim"}
CHECK_MARK = {"pass": ("✓", "green"), "fail": ("✗", "red"), "inconclusive": ("?", "yellow"), "skipped": ("-", "dim")}


def _verification_cell(v: dict[str, Any] | None) -> Text:
    if v is None:
        return Text("-")
    state = v["state"]
    if state == "verifying":
        left = max(0.0, v["windowEnd"] - datetime.now(timezone.utc).timestamp())
        return Text(f"verifying ({left:.0f}s left)", style=VERDICT_STYLE[state])
    label = state.upper() if state == "failed" else state
    if v.get("acceptedBy"):
        label += f", accepted by {v['acceptedBy']}"
    if v.get("attempts", 1) > 1:
        label += f" (attempt {v['attempt']})"
    return Text(label, style=VERDICT_STYLE.get(state, ""))


def _side(side: dict[str, Any] | None) -> str:
    if not side:
        return "-"
    rate = "-" if side["errorRatePercent"] is None else f"{side['errorRatePercent']:.2f}%"
    p99 = "-" if side["p99Ms"] is None else f"{side['p99Ms']:.1f} ms"
    return (f"revision {side['revision']}: {side['requests']} requests ({side['ratePerSecond']:.1f}/s), "
            f"{side['errors']} errors ({rate}), p99 {p99}")


def _verdict_lines(group: str, v: dict[str, Any]) -> list[Text]:
    lines = [Text.assemble(f"  {group} ", (v["state"].upper(), VERDICT_STYLE.get(v["state"], "")),
                           f"  over {v['window']['seconds']:.0f}s  new {_side(v.get('canary'))}  |  "
                           f"old {_side(v.get('baseline'))}")]
    for c in v["checks"]:
        mark, style = CHECK_MARK.get(c["outcome"], ("·", ""))
        detail = f" — {c['detail']}" if c["detail"] else ""
        lines.append(Text(f"     {mark} {c['name']}: {c['observed']} (limit: {c['limit']}){detail}", style=style))
    return lines


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


def _action(name: str, help_text: str, with_fast: bool = False, with_reverify: bool = False) -> None:
    @click.argument("app")
    @click.option("--expect-phase", help="act only if the release is in this phase (else 409)")
    @command
    async def act(client: Client, app: str, expect_phase: str | None, fast: bool = False,
                  reverify: bool = False) -> None:
        r = await client.post(f"/v1/apps/{app}/release/{name}", {"fast": fast, "expectPhase": expect_phase,
                                                                 "reverify": reverify})
        if r.get("rollbackOf") is not None:  # the release had succeeded: a new one goes back
            console.print(f"release {r['rollbackOf']} of {app} had {r['previousPhase']}; rollback release {r['id']} "
                          f"started: revision {r['fromRevision']} → {r['toRevision']}, {len(r['groups'])} group(s)"
                          f"{' at once' if fast else ''}")
            console.print(f"follow it: ballast release status {app} --watch")
            return
        console.print(f"release {r['id']} of {app}: {r['previousPhase']} → {r['phase']}")

    act.__doc__ = help_text
    if with_fast:
        act = click.option("--fast", is_flag=True, help="roll every cell back at once (emergencies)")(act)
    if with_reverify:
        act = click.option("--reverify", is_flag=True,
                           help="after a failed or inconclusive verification: judge a new window instead of "
                                "accepting the verdict")(act)
    release.command(name)(act)


_action("pause", "Stop at the next safe point (instances already changing finish).")
_action("resume", "Continue a paused release (past a verdict that stopped it: accept that verdict).",
        with_reverify=True)
_action("rollback", "Return every updated instance to the previous revision, newest group first; after a release "
                    "succeeded, start a new release back to the revision that ran before it.", with_fast=True)


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
    for col in ("ID", "KIND", "FROM→TO", "OUTCOME", "STARTED BY", "STARTED", "DURATION", "ACTIONS"):
        table.add_column(col)
    for r in items:
        actions = "; ".join(f"{e['action']} by {e['actor']} at {_ts(e['ts'])}" for e in r["events"])
        table.add_row(str(r["id"]), r["kind"], f"{r['fromRevision']}→{r['toRevision']}", r["phase"], r["createdBy"],
                      _ts(r["startedAt"]), f"{r['durationSeconds']}s" if r["durationSeconds"] is not None else "-", actions)
    console.print(table)


def _ts(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S")


