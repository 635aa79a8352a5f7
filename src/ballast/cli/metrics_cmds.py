"""`ballast metrics APP`: what an app's instances served in the last seconds, by revision, cell or instance."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.console import Group as RenderGroup
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ballast.cli.common import command, console, print_as
from ballast.client import Client

REFRESH_SECONDS = 2.0


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def render(m: dict[str, Any]) -> RenderGroup:
    by = m["by"]
    title = (f"{m['app']}: last {m['windowSeconds']:g}s, by {by}, as the {m['source']}s counted it "
             f"(deployed revision {m['deployedRevision']}, newest {m['latestRevision']})")
    table = Table(title=title, box=None, header_style="bold", title_justify="left")
    columns = [by.upper()]
    if by != "revision":
        columns.append("REVISION")
    if by == "instance":
        columns.append("CELL")
    columns += ["INSTANCES", "REQ/S", "REQUESTS", "2XX", "4XX", "5XX", "CONN ERR", "ERRORS", "P50 MS", "P90 MS",
                "P99 MS"]
    for col in columns:
        table.add_column(col, justify="left" if col in (by.upper(), "REVISION", "CELL") else "right")
    for row in m["rows"]:
        w = row["window"]
        cells = [row["key"]]
        if by != "revision":
            cells.append(",".join(str(r) for r in row["revisions"]))
        if by == "instance":
            cells.append(",".join(row["cells"]))
        cells += [str(row["instances"]), f"{w['ratePerSecond']:.1f}", str(w["requests"]), str(w["responses"]["2xx"]),
                  str(w["responses"]["4xx"]), str(w["responses"]["5xx"]), str(w["connErrors"]),
                  _percent(w["errorRatePercent"]), _ms(w["p50Ms"]), _ms(w["p90Ms"]), _ms(w["p99Ms"])]
        style = "red" if (w["errorRatePercent"] or 0) > 0 else None
        table.add_row(*cells, style=style)
    parts: list[Any] = [table]
    if not m["rows"]:
        parts.append(Text("no requests counted yet (or none of the app's sources could be read)", style="yellow"))
    for s in m["sources"]:
        if not s["ok"]:
            parts.append(Text(f"  ⚠ {s['error']}", style="yellow"))
    return RenderGroup(*parts)


@click.command("metrics")
@click.argument("app")
@click.option("--by", type=click.Choice(["revision", "cell", "instance"]), default="revision", show_default=True)
@click.option("--window", type=click.FloatRange(1, 300), default=30.0, show_default=True, help="seconds")
@click.option("--source", type=click.Choice(["sidecar", "gateway"]), default="sidecar", show_default=True,
              help="count at the instances' sidecars (everything they served) or at the gateways")
@click.option("--watch", is_flag=True, help=f"redraw every {REFRESH_SECONDS:g}s until Ctrl-C")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "yaml", "json"]), default="table")
@command
async def metrics(client: Client, app: str, by: str, window: float, source: str, watch: bool, fmt: str) -> None:
    """Requests, errors and response-time percentiles of APP's instances: live, from their sidecars."""
    query = {"by": by, "window": window, "source": source}
    m = await client.get(f"/v1/apps/{app}/metrics", **query)
    if not watch or fmt != "table":
        print_as(m, fmt, render)
        return
    with Live(render(m), console=console, refresh_per_second=2) as live:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            live.update(render(await client.get(f"/v1/apps/{app}/metrics", **query)))
