"""Spec of `ballast get instances` at the command line, against a real API server on loopback: the list comes
page by page with the filters applied by the server, and `--watch` prints each change as a line, failing over
from a control-plane URL that does not answer to one that does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import uvicorn
from click.testing import CliRunner

from ballast.api.app import create_app
from ballast.cli import instance_cmds
from ballast.cli.main import cli
from ballast.services.access import bootstrap_admin
from ballast.services.instances import WATCH_TOPICS
from ballast.store.engine import Store
from tests.e2e.conftest import free_port
from tests.unit.test_api_paging import forget, grid, seed


class Served:
    """The API over a SQLite store in a thread of its own; the first watch that waits sees an instance deleted."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"sqlite:///{tmp_path / 'ballast.db'}"
        self.ready = threading.Event()
        self.token = ""
        self.server: uvicorn.Server | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="api", daemon=True)

    async def _main(self) -> None:
        store = await Store.open(self.url)
        try:
            self.token = str(await bootstrap_admin(store))
            await seed(store, grid(2))
            real_wait, changed = store.wait_for_topics, False

            async def wait(topics: frozenset[str], after: int, timeout: float) -> int:
                nonlocal changed
                if topics == WATCH_TOPICS and not changed:
                    changed = True
                    await forget(store, ["b-cell-2-001"])   # while the CLI watches
                return int(await real_wait(topics, after, timeout))

            store.wait_for_topics = wait  # type: ignore[method-assign]
            config = uvicorn.Config(create_app(store), host="127.0.0.1", port=self.port, log_level="warning",
                                    lifespan="off")
            self.server = uvicorn.Server(config)
            serving = asyncio.create_task(self.server.serve())
            while not self.server.started and not serving.done():
                await asyncio.sleep(0.01)
            self.ready.set()
            await serving
        finally:
            self.ready.set()
            await store.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    api = Served(tmp_path)
    api.thread.start()
    assert api.ready.wait(30) and api.server is not None and api.server.started, "the API server did not start"
    yield api
    api.server.should_exit = True
    api.thread.join(30)


def run(api: Served, *args: str, servers: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--server", servers or f"http://127.0.0.1:{api.port}", "--token", api.token,
                                      "get", "instances", *args])
    return result.exit_code, result.output


def test_the_list_comes_page_by_page_with_the_filters_applied_by_the_server(served: Served) -> None:
    code, out = run(served, "--limit", "2", "--cell", "cell-1")
    assert code == 0, out
    listed = [line.split()[0] for line in out.splitlines() if line.strip() and not line.startswith("ID")]
    assert listed == [k[2] for k in sorted(grid(2)) if k[1] == "cell-1"]
    assert sum(line.startswith("ID") for line in out.splitlines()) == 1, "one header, however many pages"
    code, out = run(served, "b", "--ready", "maybe")
    assert code == 2 and "maybe" in out


def test_watch_prints_each_change_until_ctrl_c_failing_over_between_servers(served: Served,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[str] = []
    real_printer = instance_cmds.printer

    def printer(console: Any) -> Callable[[dict[str, Any]], None]:
        show = real_printer(console)

        def each(event: dict[str, Any]) -> None:
            show(event)
            printed.append(event["type"])
            raise KeyboardInterrupt   # Ctrl-C after the first change

        return each

    monkeypatch.setattr(instance_cmds, "printer", printer)
    silent = f"http://127.0.0.1:{free_port()}"     # nothing listens there
    code, out = run(served, "b", "--watch", servers=f"{silent},http://127.0.0.1:{served.port}")
    assert code == 130, out
    assert printed == ["DELETED"]
    [line] = [line for line in out.splitlines() if line.startswith("DELETED")]
    assert line.split()[:5] == ["DELETED", "b-cell-2-001", "-", "n-cell-2", "cell-2"], line
    assert out.index("b-cell-1-000") < out.index("DELETED"), "the list first, then the changes"
