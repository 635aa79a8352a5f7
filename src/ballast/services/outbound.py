"""The control plane's calls on users' behalf (webhooks, PromQL, telemetry reads), held to `core.outbound`.

Checked twice: when a URL or address is given (apply, release start, registration: a 422 naming the field),
and when it is called, at the moment of connecting: the client's network backend resolves the name, checks
every address it resolves to, and connects to the address it checked, so a name whose DNS answer changed in
between (rebinding) is refused too. These clients send no credentials of ours (no Authorization header, no
cookies, no .netrc or proxy settings from the environment) and follow no redirect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from typing import Any, Iterable

import httpcore
import httpx

from ballast.core.outbound import OutboundPolicy, address_refusal, telemetry_refusal, url_refusal
from ballast.core.strategy import PrometheusSpec, VerifyOverride, VerifySpec, WebhookSpec
from ballast.errors import BallastError, FieldProblem, InvalidInput

RESOLVE_TIMEOUT = 5.0


class OutboundRefused(BallastError):
    """A call the policy does not allow; raised instead of connecting."""

    status = 422


def is_this_host(ip: str) -> bool:
    """Whether `ip` is one of this host's addresses: only those can be bound (no interface list to go stale)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses the policy allows, and to the one it checked."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM), timeout or RESOLVE_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise httpcore.ConnectError(f"{host}: cannot resolve ({type(exc).__name__})") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in addresses:
            refusal = address_refusal(self.policy, ipaddress.ip_address(address), port, is_this_host(address))
            if refusal is not None:
                raise OutboundRefused(f"refused to call {host}:{port}: {refusal}")
        return await self.inner.connect_tcp(addresses[0], port, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused("refused to call a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_transport(policy: OutboundPolicy) -> httpx.AsyncBaseTransport:
    transport = httpx.AsyncHTTPTransport()
    # httpx takes no network backend; its pool does. A test (test_outbound_calls) fails if this stops working.
    transport._pool = httpcore.AsyncConnectionPool(ssl_context=ssl.create_default_context(),
                                                   network_backend=_GuardedBackend(policy))
    return transport


def client(policy: OutboundPolicy, *, timeout: float | None = None,
           transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """An HTTP client for calls on users' behalf: guarded (unless a test gives its own transport), without
    our credentials or the environment's, without redirects."""
    return httpx.AsyncClient(transport=transport or guarded_transport(policy), timeout=timeout, trust_env=False,
                             follow_redirects=False)


def verify_problems(policy: OutboundPolicy, verify: VerifySpec | VerifyOverride | None,
                    path: str) -> list[FieldProblem]:
    """The URLs of a verification gate (or of a release's override of one) the policy refuses, each as a
    problem at its field path."""
    # An override's fields are derived at run time (core.strategy): read them by name.
    hooks: list[WebhookSpec] = getattr(verify, "webhooks", None) or []
    prometheus: PrometheusSpec | None = getattr(verify, "prometheus", None)
    problems = []
    for k, hook in enumerate(hooks):
        refusal = url_refusal(policy, hook.url)
        if refusal is not None:
            problems.append(FieldProblem(f"{path}.webhooks[{k}].url", hook.url, f"a URL the platform may call ({refusal})"))
    if prometheus is not None:
        refusal = url_refusal(policy, prometheus.url)
        if refusal is not None:
            problems.append(FieldProblem(f"{path}.prometheus.url", prometheus.url,
                                         f"a URL the platform may call ({refusal})"))
    return problems


def refuse_verify_urls(policy: OutboundPolicy, verify: VerifySpec | VerifyOverride | None, path: str) -> None:
    problems = verify_problems(policy, verify, path)
    if problems:
        raise InvalidInput("a verification URL aims where the platform may not call; nothing was started",
                           problems=problems)


def refuse_telemetry_address(policy: OutboundPolicy, home: str, address: str | None) -> None:
    """InvalidInput when a component registers a telemetry address (`metrics_address`) off its own IP `home`,
    or our API: the control plane reads it later."""
    if address is None:
        return
    expected = telemetry_refusal(policy, home, address, is_this_host(address.rpartition(":")[0].strip("[]")))
    if expected is not None:
        raise InvalidInput("a telemetry address the control plane may not read; nothing was registered",
                           problems=[FieldProblem("metricsAddress", address, expected)])
