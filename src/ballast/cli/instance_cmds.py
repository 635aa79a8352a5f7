"""`ballast get instances`: the list fetched page by page, and `--watch`, which streams changes.

A list reads `GET /v1/instances?limit=N` and follows `metadata.continue` to the end, printing each page as it
comes. A watch lists first (like `kubectl get -w`), then long-polls `GET /v1/instances?watch=true&
resourceVersion=RV` and prints one line per change, going on from the answer's version; a replica that stops
answering is left for the next (the Client fails over, as for any read), and a version too old to go on from
(410) lists again. Until Ctrl-C.
"""

from __future__ import annotations

from typing import Any, Callable

from rich.console import Console

from ballast.cli import output
from ballast.client import ApiError, Client

PAGE = 500
WATCH_SECONDS = 25.0     # each long-poll's bound: inside the client's own answer timeout (30 s)


async def list_pages(client: Client, params: dict[str, Any], limit: int,
                     each: Callable[[list[dict[str, Any]]], None]) -> str:
    """Every instance matching `params`, `limit` at a time, each page handed to `each`; the version the first
    page was read at (every later change is after it)."""
    token: str | None = None
    version = ""
    while True:
        answer = await client.get("/v1/instances", **params, limit=limit, **({"continue": token} if token else {}))
        version = version or answer["metadata"]["resourceVersion"]
        each(answer["items"])
        token = answer["metadata"].get("continue")
        if not token:
            return version


async def watch(client: Client, params: dict[str, Any], since: str, each: Callable[[dict[str, Any]], None],
                relist: Callable[[], Any], *, rounds: int | None = None) -> None:
    """Hand every change after version `since` to `each`, in order, until cancelled (or after `rounds`
    long-polls: tests). A 410 (too old to go on from) calls `relist`, which answers the version to go on from."""
    done = 0
    while rounds is None or done < rounds:
        done += 1
        try:
            answer = await client.get("/v1/instances", **params, watch="true", resourceVersion=since,
                                      timeout=WATCH_SECONDS)
        except ApiError as exc:
            if exc.status != 410:
                raise
            since = await relist()
            continue
        for event in answer["events"]:
            each(event)
        since = answer["metadata"]["resourceVersion"]


def change_line(event: dict[str, Any]) -> list[str]:
    """A change as a row of the instances table, its type first."""
    return [event["type"], *output.COLUMNS["instances"][1](event["object"])]


def printer(console: Console) -> Callable[[dict[str, Any]], None]:
    def each(event: dict[str, Any]) -> None:
        console.print("  ".join(change_line(event)), markup=False)
    return each
