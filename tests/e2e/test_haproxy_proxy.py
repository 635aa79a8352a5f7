"""The HAProxy adapter against the real binary: seamless reloads, rejected configurations, runtime changes.

A sidecar rendered by `dataplane.haproxy_config` fronts two demo-app processes. Under continuous load
(keep-alive connections and fresh connections) it is reloaded again and again with structural changes:
not one connection may be refused and not one request may fail. A configuration HAProxy refuses leaves
the running one serving, and the file on disk, as they were.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from ballast.dataplane import runtime
from ballast.dataplane.collector import read_gateway
from ballast.dataplane.haproxy import ConfigRejected, HAProxy, ProxyFiles, find_binary, install_stats_script
from ballast.dataplane.haproxy_config import (Address, Backend, GatewayConfig, GatewayRoute, Server, SidecarConfig,
                                             render_gateway, render_sidecar)
from ballast.loadgen import Load, Target
from tests.e2e.conftest import eventually, free_port
from tests.e2e.test_releases import DEMO_APP

pytestmark = pytest.mark.e2e
IP = "127.0.61.2"


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[list[int]]:
    """Two demo apps listening on IP, their ports."""
    ports = [free_port(IP), free_port(IP)]
    procs = [subprocess.Popen([sys.executable, str(DEMO_APP)], env={**os.environ, "HOST": IP, "PORT": str(p),
                                                                     "BALLAST_INSTANCE_ID": f"app-{k}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for k, p in enumerate(ports)]
    try:
        for p in ports:
            eventually(lambda p=p: _listening(p), f"app on {p}")
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _listening(port: int) -> None:
    import socket
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex((IP, port)) == 0, f"nothing on {IP}:{port}"


def sidecar_config(proxy: HAProxy, ports: list[int], inbound: int, outbound: int,
                   services: int) -> tuple[str, tuple[Backend, ...]]:
    backend = Backend("back", tuple(Server(f"b{k}", Address(IP, p)) for k, p in enumerate(ports)))
    extra = tuple(Backend(f"svc{k}", ()) for k in range(services))  # structure: more services, more backends
    backends = (backend, *extra)
    cfg = SidecarConfig(instance="t1", admin_socket=str(proxy.files.admin_socket), inbound=Address(IP, inbound),
                        app=Address(IP, ports[0]), outbound=Address(IP, outbound), backends=backends)
    return render_sidecar(cfg), backends


async def test_reloads_under_load_refuse_no_connection_and_fail_no_request(tmp_path: Path, apps: list[int]) -> None:
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test sidecar")
    inbound, outbound = free_port(IP), free_port(IP)
    text, backends = sidecar_config(proxy, apps, inbound, outbound, 0)
    await proxy.start(text)
    master = proxy.pid
    try:
        load = Load([Target("keep-alive", IP, outbound, "back", connections=8),
                     Target("inbound", IP, inbound, "t1", connections=4)], timeout=10)
        fresh = _FreshConnections(IP, outbound)
        load.start()
        fresh.start()
        for k in range(1, 9):
            await asyncio.sleep(0.4)
            text, backends = sidecar_config(proxy, apps, inbound, outbound, k)
            assert await proxy.converge(text, backends) == []
        await asyncio.sleep(0.5)
        await load.stop()
        await fresh.stop()
        assert load.failed == 0 and fresh.failed == 0, (dict(load.failures()), fresh.failures)
        assert load.requests > 500 and fresh.requests > 50, (load.requests, fresh.requests)
        assert proxy.pid == master, "a reload keeps the master (the process the agent supervises)"
        assert "backend svc_svc7" in (tmp_path / "proxy" / "haproxy.cfg").read_text(), "the newest structure"
    finally:
        await proxy.stop(2)


async def test_a_refused_configuration_leaves_the_running_one_in_place(tmp_path: Path, apps: list[int]) -> None:
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test sidecar")
    inbound, outbound = free_port(IP), free_port(IP)
    text, backends = sidecar_config(proxy, apps, inbound, outbound, 1)
    await proxy.start(text)
    try:
        broken = text.replace("balance roundrobin", "balance no-such-algorithm", 1)
        with pytest.raises(ConfigRejected) as refused:
            await proxy.converge(broken, backends)
        assert "balance only supports" in refused.value.message and "stays in place" in refused.value.message
        assert (tmp_path / "proxy" / "haproxy.cfg").read_text() == text, "the file was not touched"
        assert proxy.alive()
        reader, writer = await asyncio.open_connection(IP, outbound)
        writer.write(b"GET / HTTP/1.1\r\nHost: back\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200"), "still serving the previous configuration"
        writer.close()
    finally:
        await proxy.stop(2)


async def test_runtime_changes_route_around_a_server_without_a_reload(tmp_path: Path, apps: list[int]) -> None:
    """A server put in maintenance gets no request; adding and deleting servers needs no reload."""
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test sidecar")
    inbound, outbound = free_port(IP), free_port(IP)
    text, backends = sidecar_config(proxy, apps, inbound, outbound, 0)
    await proxy.start(text)
    try:
        only_b1 = (Backend("back", (Server("b0", Address(IP, apps[0]), enabled=False),
                                    Server("b1", Address(IP, apps[1])))),)
        assert await proxy.converge(sidecar_config(proxy, apps, inbound, outbound, 0)[0], only_b1) == []
        seen = {await _instance_via(outbound) for _ in range(6)}
        assert seen == {"app-1"}, seen
        moved = (Backend("back", (Server("b9", Address(IP, apps[0])),)),)
        assert await proxy.converge(text, moved) == []
        assert {await _instance_via(outbound) for _ in range(4)} == {"app-0"}
        assert set((await proxy.servers())["svc_back"]) == {"b9"}
        assert "New worker" not in (tmp_path / "proxy" / "haproxy.log").read_text().split("forked", 1)[-1], \
            "no reload happened"
    finally:
        await proxy.stop(2)


async def test_one_runtime_session_answers_each_command_in_turn(tmp_path: Path, apps: list[int]) -> None:
    """Many commands over one connection: one answer each, in order, a refusal named where it happened."""
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test sidecar")
    inbound, outbound = free_port(IP), free_port(IP)
    text, backends = sidecar_config(proxy, apps, inbound, outbound, 0)
    await proxy.start(text)
    try:
        lines = ["set server svc_back/b0 state maint", "set server svc_back/nobody state ready",
                 "show servers state svc_back", "set server svc_back/b0 state ready"]
        answers = await runtime.session(proxy.files.admin_socket, lines)
        assert len(answers) == 4
        assert answers[0].strip() == "" and answers[3].strip() == ""
        assert "No such server" in answers[1]
        assert " b0 " in answers[2] and " b1 " in answers[2] and "No such server" not in answers[2]
        refused = await proxy.run(["set server svc_back/b1 state maint", "set server svc_back/ghost state maint"])
        assert refused == ["set server svc_back/ghost state maint: No such server."], refused
        assert {await _instance_via(outbound) for _ in range(4)} == {"app-0"}, "b1 in maintenance, b0 serving"
    finally:
        await proxy.stop(2)


async def test_what_haproxy_confirmed_stands_in_for_a_read_until_it_may_be_stale(
        tmp_path: Path, apps: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """An apply that changes nothing opens no connection; one that changes a server opens one (the change);
    a change made by hand on the runtime API is repaired once what was confirmed is older than KNOWN_SECONDS."""
    from ballast.dataplane import haproxy
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test sidecar")
    inbound, outbound = free_port(IP), free_port(IP)
    text, backends = sidecar_config(proxy, apps, inbound, outbound, 0)
    await proxy.start(text)
    sessions: list[list[str]] = []
    real = runtime.session

    async def counted(path: Any, lines: list[str], **kw: Any) -> list[str]:
        sessions.append(lines)
        return await real(path, lines, **kw)
    monkeypatch.setattr(runtime, "session", counted)
    try:
        assert await proxy.converge(text, backends) == []
        assert [s[0] for s in sessions] == ["show servers state"], "the first apply after a start reads"
        sessions.clear()
        assert await proxy.converge(text, backends) == [] and sessions == [], "nothing to change, nothing sent"
        b0_off = (Backend("back", (Server("b0", Address(IP, apps[0]), enabled=False),
                                   Server("b1", Address(IP, apps[1])))),)
        assert await proxy.converge(text, b0_off) == []
        assert sessions == [["set server svc_back/b0 state maint"]], sessions
        sessions.clear()
        await runtime.command(proxy.files.admin_socket, "set server svc_back/b1 state maint")   # by hand
        monkeypatch.setattr(haproxy, "KNOWN_SECONDS", 0.0)
        assert await proxy.converge(text, b0_off) == []
        assert sessions == [["show servers state"], ["set server svc_back/b1 state ready"]], sessions
        assert {await _instance_via(outbound) for _ in range(4)} == {"app-1"}
    finally:
        await proxy.stop(2)


async def _instance_via(port: int) -> str:
    import json
    reader, writer = await asyncio.open_connection(IP, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: back\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    return str(json.loads(raw.split(b"\r\n\r\n", 1)[1])["instance"])


class _FreshConnections:
    """One new TCP connection per request, to see a refused connection if a reload ever drops the listener."""

    def __init__(self, ip: str, port: int) -> None:
        self.ip, self.port = ip, port
        self.requests = self.failed = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(2)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _run(self) -> None:
        while not self._stop.is_set():
            self.requests += 1
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(self.ip, self.port), 5)
                writer.write(b"GET / HTTP/1.1\r\nHost: back\r\nConnection: close\r\n\r\n")
                status = await asyncio.wait_for(reader.readline(), 5)
                writer.close()
                if not status.startswith(b"HTTP/1.1 200"):
                    self.failed += 1
                    self.failures.append(status.decode(errors="replace"))
            except (OSError, TimeoutError) as exc:
                self.failed += 1
                self.failures.append(repr(exc))


async def test_the_gateway_refuses_a_request_that_names_no_one_host(tmp_path: Path, apps: list[int]) -> None:
    """A Host list, two Host headers, or a Host that disagrees with an absolute URI is a 400: none of them is
    routed (a list used to go to its last element's service)."""
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test gateway")
    listen = free_port(IP)
    backends = (Backend("shop", (Server("s0", Address(IP, apps[0])),)),
                Backend("other", (Server("o1", Address(IP, apps[1])),)))
    cfg = GatewayConfig(name="t", admin_socket=str(proxy.files.admin_socket), listen=Address(IP, listen),
                        routes=(GatewayRoute("shop.local", "/", "shop"), GatewayRoute("other.local", "/", "other")),
                        backends=backends)
    await proxy.start(render_gateway(cfg))
    try:
        async def status(head: str) -> bytes:
            reader, writer = await asyncio.open_connection(IP, listen)
            writer.write(head.encode() + b"Connection: close\r\n\r\n")
            line = await reader.readline()
            writer.close()
            return line.split(b" ")[1]

        assert await status("GET / HTTP/1.1\r\nHost: shop.local\r\n") == b"200"
        assert await status("GET / HTTP/1.1\r\nHost: shop.local, other.local\r\n") == b"400"
        assert await status("GET / HTTP/1.1\r\nHost: shop.local\r\nHost: other.local\r\n") == b"400"
        assert await status("GET http://other.local/ HTTP/1.1\r\nHost: shop.local\r\n") == b"400"
        assert await status("GET http://other.local/ HTTP/1.1\r\nHost: other.local\r\n") == b"200"
    finally:
        await proxy.stop(2)


async def test_the_gateways_statistics_read_under_load_never_crash_its_worker(tmp_path: Path, apps: list[int]) -> None:
    """`ballast stats` (Lua) of a gateway with many servers, each with its response-time buckets, walks past
    HAProxy's 10,000-instruction forced yield; HAProxy 2.6 kills its worker (code 139) when a CLI command yields
    there, and every connection to the gateway is refused until it is started again."""
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test gateway")
    listen = free_port(IP)
    services = [f"s{k}" for k in range(3)]
    backends = tuple(Backend(svc, tuple(Server(f"{svc}-{n}", Address(IP, apps[n % 2])) for n in range(24)))
                     for svc in services)
    cfg = GatewayConfig(name="t", admin_socket=str(proxy.files.admin_socket), listen=Address(IP, listen),
                        routes=tuple(GatewayRoute(f"{svc}.local", "/", svc) for svc in services), backends=backends,
                        threads=2, stats=install_stats_script(tmp_path / "stats"))
    await proxy.start(render_gateway(cfg))
    worker = await runtime.command(proxy.files.admin_socket, "show info")
    try:
        load = Load([Target(svc, IP, listen, f"{svc}.local", connections=4) for svc in services], timeout=10)
        load.start()
        biggest = 0
        for _ in range(40):
            await asyncio.sleep(0.1)
            epoch, counts = await read_gateway(proxy.files.admin_socket)
            biggest = max(biggest, len(counts))
        await load.stop()
        assert biggest == 72 and load.requests > 500, (biggest, load.requests)
        assert load.failed == 0, dict(load.failures())
        log = (tmp_path / "proxy" / "haproxy.log").read_text()
        assert "exited with code" not in log, log[-2000:]
        pid = next(line for line in worker.splitlines() if line.startswith("Pid:"))
        assert pid in await runtime.command(proxy.files.admin_socket, "show info"), "the same worker serves"
    finally:
        await proxy.stop(2)


async def test_the_outbound_listener_answers_its_own_host_and_turns_away_another_address(
        tmp_path: Path, apps: list[int]) -> None:
    """A caller speaking from another node's address (one machine, many nodes) gets no answer from the mesh
    listener; a call from the instance itself (the kernel's source for loopback, 127.0.0.1) is served."""
    proxy = HAProxy(find_binary(), ProxyFiles(tmp_path / "proxy"), label="test sidecar")
    inbound, outbound = free_port(IP), free_port(IP)
    text, _ = sidecar_config(proxy, apps, inbound, outbound, 0)
    await proxy.start(text)
    try:
        assert (await _first_line(outbound, source=None)).startswith(b"HTTP/1.1 200")
        assert await _first_line(outbound, source="127.0.61.3") == b"", "another address is not served"
        assert (await _first_line(inbound, source="127.0.61.3", host="t1")).startswith(b"HTTP/1.1 200"), \
            "the endpoint faces every caller"
    finally:
        await proxy.stop(2)


async def _first_line(port: int, source: str | None, host: str = "back") -> bytes:
    """The first line of the answer to a GET (b"" if the connection is closed or reset without one)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(IP, port, local_addr=(source, 0) if source else None), 5)
    except ConnectionError:
        return b""
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(reader.readline(), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()
