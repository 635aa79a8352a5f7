"""`ballast task run NAME`: a scheduled task's manual run, now."""

from __future__ import annotations

import click

from ballast.cli.common import command, console
from ballast.client import Client


@click.group()
def task() -> None:
    """Scheduled tasks: run one now (`ballast get taskruns NAME` shows its runs and shards)."""


@task.command("run")
@click.argument("name")
@command
async def run(client: Client, name: str) -> None:
    """Start a run of task NAME now: persisted with all its shards before any call is made; prints the run id."""
    answer = await client.post(f"/v1/scheduledtasks/{name}/runs")
    console.print(f"scheduledtask/{name}: run {answer['run']} started")
    console.print(f"watch it: ballast describe taskrun {answer['run']}")
