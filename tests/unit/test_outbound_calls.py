"""Spec of where the control plane may call on users' behalf, and of what it sends: the policy as tables, the
calls against real local HTTP servers that record what reached them (127.0.161.x)."""

from __future__ import annotations

import ipaddress
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from ballast.core.outbound import OutboundPolicy, address_refusal, gateway_home, telemetry_refusal, url_refusal
from ballast.core.verification import Outcome, Verification, Webhook
from ballast.services import outbound, request_metrics, verification_checks

LOOPBACK_OK = OutboundPolicy.parse(["127.0.0.0/8"], own_ports=frozenset({7700}))
STRICT = OutboundPolicy(own_ports=frozenset({7700}))
HTTPX_OWN_HEADERS = {"host", "accept", "accept-encoding", "connection", "user-agent", "content-length",
                     "content-type"}


@pytest.mark.parametrize(("policy", "ip", "port", "this_host", "refused"), [
    (STRICT, "93.184.216.34", 443, False, None),
    (STRICT, "127.0.0.1", 9090, False, "127.0.0.1 is a loopback address"),
    (STRICT, "10.1.2.3", 80, False, "10.1.2.3 is a private address"),
    (STRICT, "192.168.1.1", 80, False, "192.168.1.1 is a private address"),
    (STRICT, "169.254.169.254", 80, False, "169.254.169.254 is a link-local address"),   # cloud metadata
    (STRICT, "0.0.0.0", 80, False, "0.0.0.0 is a unspecified address"),
    (STRICT, "224.0.0.1", 80, False, "224.0.0.1 is a multicast address"),
    (STRICT, "100.64.0.1", 80, False, "100.64.0.1 is a non-global address"),
    (STRICT, "::1", 80, False, "::1 is a loopback address"),
    (STRICT, "::ffff:127.0.0.1", 80, False, "127.0.0.1 is a loopback address"),
    (STRICT, "fd00::1", 80, False, "fd00::1 is a private address"),
    (STRICT, "93.184.216.34", 80, True, "93.184.216.34 is a this host's address"),
    (LOOPBACK_OK, "127.0.0.1", 9090, False, None),
    (LOOPBACK_OK, "127.0.161.9", 80, False, None),
    (LOOPBACK_OK, "10.1.2.3", 80, False, "10.1.2.3 is a private address"),
    # The control plane's own API: never, whatever is allowed.
    (LOOPBACK_OK, "127.0.0.1", 7700, False, "127.0.0.1:7700 is the control plane's own API"),
    (LOOPBACK_OK, "127.0.0.9", 7700, False, "127.0.0.9:7700 is the control plane's own API"),
    (LOOPBACK_OK, "0.0.0.0", 7700, False, "0.0.0.0:7700 is the control plane's own API"),
    (STRICT, "93.184.216.34", 7700, True, "93.184.216.34:7700 is the control plane's own API"),
    (STRICT, "93.184.216.34", 7700, False, None),
])
def test_address_policy(policy: OutboundPolicy, ip: str, port: int, this_host: bool, refused: str | None) -> None:
    got = address_refusal(policy, ipaddress.ip_address(ip), port, this_host)
    assert (got is None) if refused is None else (got is not None and got.startswith(refused))


@pytest.mark.parametrize(("url", "refused"), [
    ("https://checks.example.com/smoke", None),            # a name: resolved and checked when called
    ("http://127.0.0.1:9090", "127.0.0.1 is a loopback address"),
    ("http://[::1]:9090/", "::1 is a loopback address"),
    ("http://localhost:9090/", "127.0.0.1 is a loopback address"),
    ("http://prom.localhost/", "127.0.0.1 is a loopback address"),
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
    ("ftp://example.com/", "an http(s) URL with a host"),
    ("http://example.com:99999/", "a port in 1..65535"),
])
def test_url_policy_before_any_name_is_resolved(url: str, refused: str | None) -> None:
    got = url_refusal(STRICT, url)
    assert (got is None) if refused is None else (got is not None and got.startswith(refused))


@pytest.mark.parametrize(("home", "address", "expected"), [
    ("10.0.0.5", "10.0.0.5:9464", None),                  # a node's telemetry on its own (private) IP
    ("127.0.0.2", "127.0.0.2:9464", None),
    ("10.0.0.5", "10.0.0.6:9464", "an address on the component's own IP 10.0.0.5"),
    ("10.0.0.5", "169.254.169.254:80", "an address on the component's own IP 10.0.0.5"),
    ("127.0.0.1", "127.0.0.1:7700", "not the control plane's own API (127.0.0.1:7700)"),
    ("0.0.0.0", "0.0.0.0:9464", "a unicast address"),
    ("10.0.0.5", "nonsense", "IP:PORT"),
])
def test_telemetry_address_policy(home: str, address: str, expected: str | None) -> None:
    """A component's telemetry is read only on the IP it registered as its own, and never at our API."""
    assert telemetry_refusal(STRICT, home, address) == expected


@pytest.mark.parametrize(("address", "metrics", "home"), [
    ("127.0.0.1:8080", "127.0.0.1:9465", "127.0.0.1"),
    ("10.0.0.7:8080", "10.0.0.8:9465", "10.0.0.7"),         # then refused: not on its own IP
    ("0.0.0.0:8080", "10.0.0.8:9465", "10.0.0.8"),          # listening everywhere: its telemetry's IP
    ("[::]:8080", "[fd00::8]:9465", "fd00::8"),
    ("0.0.0.0:8080", None, "0.0.0.0"),
])
def test_a_gateways_home_is_its_listening_ip_unless_it_listens_everywhere(address: str, metrics: str | None,
                                                                         home: str) -> None:
    assert gateway_home(address, metrics) == home


# --- real calls ----------------------------------------------------------------------------------------------------

class Recorder:
    def __init__(self, ip: str) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.redirect_to: str | None = None
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                recorder.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                if recorder.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", recorder.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"series": [], "epoch": "e", "at": 1.0}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((ip, 0), Handler)
        self.ip, self.port = ip, self.server.server_address[1]
        self.url = f"http://{ip}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def servers() -> Iterator[list[Recorder]]:
    started = [Recorder("127.0.161.1"), Recorder("127.0.161.2")]
    yield started
    for s in started:
        s.close()


async def test_a_guarded_call_is_refused_at_connect_unless_its_range_is_allowed(servers: list[Recorder]) -> None:
    """The check runs when connecting, on the resolved address: a name (localhost) as well as a literal."""
    target = servers[0]
    async with outbound.client(OutboundPolicy(), timeout=5) as http:
        for url in (target.url + "/x", f"http://localhost:{target.port}/x"):
            with pytest.raises(outbound.OutboundRefused, match="loopback"):
                await http.get(url)
    assert target.requests == []
    async with outbound.client(OutboundPolicy.parse(["127.0.161.0/24"]), timeout=5) as http:
        assert (await http.get(target.url + "/x")).status_code == 200
    async with outbound.client(OutboundPolicy.parse(["127.0.0.0/8"], own_ports=frozenset({target.port})),
                               timeout=5) as http:
        with pytest.raises(outbound.OutboundRefused, match="control plane's own API"):
            await http.get(target.url + "/x")
    assert len(target.requests) == 1


async def test_webhooks_and_promql_carry_no_credentials_and_follow_no_redirect(servers: list[Recorder]) -> None:
    hook, elsewhere = servers
    hook.redirect_to = elsewhere.url + "/stolen"
    v = Verification(webhooks=(Webhook(hook.url + "/smoke", 2.0),), prometheus_url=None)
    [check] = await verification_checks.run(v, {"app": "shop"}, {}, 0.0, policy=LOOPBACK_OK)
    assert check.outcome is Outcome.FAIL and "302" in check.observed     # a redirect is an answer, not a pass
    assert elsewhere.requests == []
    [(method, path, headers)] = hook.requests
    assert (method, path) == ("POST", "/smoke")
    assert set(headers) <= HTTPX_OWN_HEADERS, headers   # no Authorization, cookie or token of ours

    [refused] = await verification_checks.run(v, {"app": "shop"}, {}, 0.0, policy=STRICT)
    assert refused.outcome is Outcome.INCONCLUSIVE and "loopback" in refused.observed
    assert len(hook.requests) == 1


async def test_telemetry_reads_go_only_to_a_components_own_ip_without_credentials(servers: list[Recorder],
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    agent, other = servers
    monkeypatch.setenv("NETRC", "/dev/null")
    home = request_metrics.Source("node-1", request_metrics.SIDECAR, f"{agent.ip}:{agent.port}", agent.ip)
    astray = request_metrics.Source("node-2", request_metrics.SIDECAR, f"{other.ip}:{other.port}", "127.0.161.3")
    ok, refused = await request_metrics.read([home, astray], "shop", policy=STRICT)
    assert ok.ok, ok.error
    assert "refused" in refused.error and other.requests == []
    [(method, path, headers)] = agent.requests
    assert method == "GET" and path.startswith("/v1/request-metrics")
    assert set(headers) <= HTTPX_OWN_HEADERS, headers


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--allow-outbound", "nonsense", "--allow-outbound 'nonsense': expected a CIDR range such as 127.0.0.0/8"),
    ("--max-artifact-files", "0", "Invalid value for '--max-artifact-files'"),
    ("--max-artifact-unpacked-bytes", "-1", "Invalid value for '--max-artifact-unpacked-bytes'"),
])
def test_the_server_refuses_a_bad_setting_naming_it_before_opening_the_store(tmp_path: Any, option: str, value: str,
                                                                            expected: str) -> None:
    from click.testing import CliRunner

    from ballast.cli.main import cli
    result = CliRunner().invoke(cli, ["server", "--store", f"sqlite:///{tmp_path}/never.db", option, value])
    assert result.exit_code == 2 and expected in result.output, result.output
    assert not (tmp_path / "never.db").exists()
