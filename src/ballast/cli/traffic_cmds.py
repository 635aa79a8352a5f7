"""`ballast traffic explain` and `ballast traffic analyze`: where a call would go, and what a rules file would do."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Group as RenderGroup
from rich.table import Table
from rich.text import Text

from ballast.cli.common import _fail, command, console, print_as
from ballast.cli.output import escape_controls
from ballast.client import Client


@click.group()
def traffic() -> None:
    """Traffic rules: explain where a call goes, analyze a rules file before applying it."""


def _explained(e: dict[str, Any]) -> RenderGroup:
    caller = e["from"] + (f" (unit {e['unit']})" if e.get("unit") else "")
    lines: list[Any] = [Text(escape_controls(f"service {e['service']} from {caller} (registry generation {e['generation']})")),
             Text(escape_controls(f"rule: {e['rule'] or '-'}   route: {e['route'] or '-'}")),
             Text(escape_controls(f"→ {e['reason']}"))]
    if e["destinations"]:
        table = Table(box=None, header_style="bold")
        for col in ("SUBSET", "WEIGHT", "SHARE", "CHOSEN", "READY ENDPOINTS"):
            table.add_column(col, overflow="fold")
        for d in e["destinations"]:
            table.add_row(*(Text(escape_controls(c)) for c in (
                d["subset"], str(d["weight"]), f"{d['share'] * 100:.3f}%", "yes" if d["chosen"] else "",
                ", ".join(d["endpoints"]) or "none: falls back")))
        lines.append(table)
    if e.get("endpoints") is not None:
        lines.append(Text(escape_controls("endpoints: " + (", ".join(e["endpoints"]) or "none"))))
    return RenderGroup(*lines)


@traffic.command()
@click.option("--service", required=True, help="the service called")
@click.option("--from", "caller", default="gateway", show_default=True, help="the calling app, or gateway")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE", help="a header the call carries")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="a tag of the call's color (baggage)")
@click.option("--cookie", "cookies", multiple=True, metavar="NAME=VALUE")
@click.option("--path", default="/", show_default=True)
@click.option("--unit", default="", help="the caller is an instance of its isolation group of this code")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
@command
async def explain(client: Client, service: str, caller: str, headers: tuple[str, ...], tags: tuple[str, ...],
                  cookies: tuple[str, ...], path: str, unit: str, fmt: str) -> None:
    """Which rule and route a call would take, and which endpoints are in that subset."""
    for option, values in (("--header", headers), ("--tag", tags), ("--cookie", cookies)):
        for v in values:
            if "=" not in v or v.startswith("="):
                _fail(f"error: {option} {v!r}: expected NAME=VALUE", 2)
    answer = await client.request("GET", "/v1/traffic/explain", params={
        "service": service, "from": caller, "header": list(headers), "tag": list(tags), "cookie": list(cookies),
        "path": path, "unit": unit})
    print_as(answer, fmt, _explained)


@traffic.command()
@click.option("-f", "--filename", "files", multiple=True, required=True, help="manifest file (YAML); - for stdin")
@command
async def analyze(client: Client, files: tuple[str, ...]) -> None:
    """What the server would refuse or warn about in FILE's rules, without applying anything."""
    from ballast.cli.main import _load_documents
    items = [doc for f in files for doc in _load_documents(f)]
    answer = await client.post("/v1/traffic/analyze", {"items": items})
    for p in answer["refused"]:
        text = (f"refused: {p['path']}: got {p.get('value')!r}, expected {p['expected']}" if "path" in p
                else f"refused: {p.get('message')}")
        console.print(Text(escape_controls(text)))
    for w in answer["warnings"]:
        console.print(Text(escape_controls(f"warning: {w}")))
    if answer["ok"] and not answer["warnings"]:
        console.print("ok: nothing refused, nothing to warn about")
    if not answer["ok"]:
        raise SystemExit(1)
