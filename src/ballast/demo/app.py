#!/usr/bin/env python3
"""Ballast demo service: a single-file, standard-library-only HTTP server.

Shipped as the sample artifact and run with ``python3 app.py``. JSON answers
report the identity Ballast injects (BALLAST_INSTANCE_ID, BALLAST_APP,
BALLAST_CELL, BALLAST_ZONE, BALLAST_REVISION, BALLAST_NODE / BALLAST_NODE_IP).

Endpoints: GET /healthz, GET /slow?ms=N (cap 10000), GET /call, and any other
GET path answers the identity JSON. A request under /tasks/ (a scheduled task's
shard, any method) answers it too, after DEMO_TASK_MS milliseconds (0), and
counts its `idempotency-key`; GET /tasks-seen answers those counts (with the
first call's target, baggage and shard headers). Environment knobs: PORT (required), HOST
(127.0.0.1), GREETING (hello), DEMO_LATENCY_PROFILE (none | realistic: 20% of
requests take 100-500 ms), DEMO_FAIL_RATE (0..1 of identity answers are 500),
DEMO_UNHEALTHY=1 (/healthz answers 503), DEMO_CALL / DEMO_CALL_HOST (URL and
optional Host header fetched by /call), DEMO_CALL_SERVICE (a service /call
reaches through the sidecar, BALLAST_MESH_URL, by name), DEMO_CALL_PATHS
(path prefixes, comma-separated, whose requests call downstream with the same
path and query: a chain of apps), DEMO_GRACE_SECONDS (10).

Identity answers echo the inbound `baggage` header (the request's color). /call
propagates it with ballast.sdk, which the sample artifact carries beside
app.py (and which a checkout of Ballast has two directories up); a copy of
app.py alone copies the header as it came, as an app in any language may.

One asyncio event loop serves every connection (HTTP/1.1, keep-alive): a
thread per connection costs a busy machine more than the requests do. /call
keeps idle connections to what it calls and reuses them; like any HTTP
client, it retries once on a fresh connection when a reused one turns out to
be closed before an answer came (the server may close an idle connection).

On SIGTERM/SIGINT it stops accepting, closes idle keep-alive connections, lets
in-flight requests finish (answering them with Connection: close) and exits 0;
exit 1 if the grace period runs out first, exit 2 on bad configuration.
"""
import asyncio
import json
import os
import random
import signal
import socket
import sys
import time
import urllib.parse
from types import SimpleNamespace


def import_sdk():
    """ballast.sdk from the artifact (beside app.py) or an installed Ballast, else from a checkout, else None."""
    try:
        from ballast import sdk
        return sdk
    except ImportError:
        pass
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(src, "ballast", "sdk", "__init__.py")):
        sys.path.append(src)  # run from a checkout: src/ballast/demo/app.py
        try:
            from ballast import sdk
            return sdk
        except ImportError:
            pass
    return None


sdk = import_sdk()

MAX_SLOW_MS = 10_000


def fail(message, code=2):
    print(f"app.py: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def env_float(env, name, default):
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        fail(f"{name} must be a number, got {raw!r}")


def load_config(env):
    raw_port = env.get("PORT", "").strip()
    if not raw_port:
        fail("the PORT environment variable is required")
    try:
        port = int(raw_port)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        fail(f"PORT must be an integer between 0 and 65535, got {raw_port!r}")
    fail_rate = env_float(env, "DEMO_FAIL_RATE", 0.0)
    if not 0.0 <= fail_rate <= 1.0:
        fail(f"DEMO_FAIL_RATE must be between 0 and 1, got {fail_rate}")
    task_ms = env_float(env, "DEMO_TASK_MS", 0.0)
    if not 0 <= task_ms <= MAX_SLOW_MS:
        fail(f"DEMO_TASK_MS must be between 0 and {MAX_SLOW_MS}, got {task_ms}")
    grace = env_float(env, "DEMO_GRACE_SECONDS", 10.0)
    if not grace >= 0:
        fail(f"DEMO_GRACE_SECONDS must be >= 0, got {grace}")
    latency = env.get("DEMO_LATENCY_PROFILE", "").strip().lower() or "none"
    if latency not in ("none", "realistic"):
        fail(f"DEMO_LATENCY_PROFILE must be 'none' or 'realistic', got {latency!r}")
    identity = {
        "app": env.get("BALLAST_APP"),
        "instance": env.get("BALLAST_INSTANCE_ID"),
        "group": env.get("BALLAST_GROUP") or "",
        "revision": env.get("BALLAST_REVISION"),
        "cell": env.get("BALLAST_CELL"),
        "zone": env.get("BALLAST_ZONE"),
        "node": env.get("BALLAST_NODE") or env.get("BALLAST_NODE_IP"),
        "greeting": env.get("GREETING", "hello"),
    }
    cfg = SimpleNamespace(
        host=env.get("HOST", "").strip() or "127.0.0.1", port=port, identity=identity,
        latency=latency, fail_rate=fail_rate, grace=grace, task_ms=task_ms,
        unhealthy=env.get("DEMO_UNHEALTHY", "").strip().lower() in ("1", "true", "yes", "on"),
        call_url=env.get("DEMO_CALL", "").strip(), call_host=env.get("DEMO_CALL_HOST", "").strip(),
        call_paths=[p.strip() for p in env.get("DEMO_CALL_PATHS", "").split(",") if p.strip().startswith("/")])
    service = env.get("DEMO_CALL_SERVICE", "").strip()
    if service:
        mesh = env.get("BALLAST_MESH_URL", "").strip()
        if not mesh:
            fail("DEMO_CALL_SERVICE needs BALLAST_MESH_URL (set by Ballast's agent)")
        cfg.call_url, cfg.call_host = mesh.rstrip("/") + "/", service
    cfg.via_mesh = bool(service)
    return cfg



STATUS_TEXT = {200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout", 500: "Internal Server Error",
               502: "Bad Gateway", 503: "Service Unavailable"}
IDLE_SECONDS = 120        # an idle keep-alive connection is closed after this long
MAX_HEAD = 64 * 1024


class Connection:
    def __init__(self, writer):
        self.writer = writer
        self.busy = False


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        self.draining = False
        self.connections = set()
        self.pool = {}        # (host, port) -> idle downstream connections
        self.tasks_seen = {}  # idempotency-key of each task shard call -> how often it arrived, and what it carried

    # --- serving ---------------------------------------------------------------
    async def handle(self, reader, writer):
        conn = Connection(writer)
        self.connections.add(conn)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not self.draining:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_SECONDS)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                conn.busy = True
                keep = await self.respond(head, reader, writer)
                conn.busy = False
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self.connections.discard(conn)
            writer.close()

    async def respond(self, head, reader, writer):
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self.send(writer, 400, b"bad request line", "text/plain", close=True)
            return False
        method, target, version = parts
        headers, baggage = {}, []
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
                if key.strip().lower() == "baggage":
                    baggage.append(value.strip())  # several lines are one list
        length = headers.get("content-length", "0")
        if not length.isdigit():
            await self.send(writer, 400, b"bad content-length", "text/plain", close=True)
            return False
        if int(length):
            await reader.readexactly(int(length))
        close = (headers.get("connection", "").lower() == "close"
                 or (version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive"))
        if target.startswith("/tasks/"):
            key = headers.get("idempotency-key", "")
            seen = self.tasks_seen.setdefault(key, {"count": 0, "target": target, "baggage": ",".join(baggage),
                                                    "shard": headers.get("x-ballast-shard"),
                                                    "shards": headers.get("x-ballast-shards")})
            seen["count"] += 1
            await asyncio.sleep(self.cfg.task_ms / 1000)
        status, body, ctype = await self.route(method, target, ",".join(baggage))
        close = close or self.draining
        await self.send(writer, status, body, ctype, close=close)
        return not close

    async def send(self, writer, status, body, ctype, close):
        head = (f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Unknown')}\r\n"
                f"Server: ballast-demo/2\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        writer.write(head.encode("latin-1") + body)
        await writer.drain()

    def identity(self, path, baggage):
        return {**self.cfg.identity, "path": path, "pid": os.getpid(), "baggage": baggage}

    def json(self, status, obj):
        return status, json.dumps(obj).encode() + b"\n", "application/json"

    async def route(self, method, target, baggage):
        cfg = self.cfg
        url = urllib.parse.urlsplit(target)
        if url.path == "/healthz":
            return (503, b"unhealthy", "text/plain") if cfg.unhealthy else (200, b"ok", "text/plain")
        if url.path == "/call":
            return await self.call(target, baggage)
        if url.path == "/tasks-seen":
            return self.json(200, {"instance": cfg.identity["instance"], "seen": self.tasks_seen})
        if any(url.path == p or url.path.startswith(p.rstrip("/") + "/") for p in cfg.call_paths):
            return await self.call(target, baggage, forward=True)
        if url.path == "/slow":
            try:
                ms = int(urllib.parse.parse_qs(url.query).get("ms", ["0"])[0])
            except ValueError:
                return self.json(400, {"error": "ms must be an integer"})
            await asyncio.sleep(min(max(ms, 0), MAX_SLOW_MS) / 1000)
        elif cfg.latency == "realistic" and random.random() < 0.2:
            await asyncio.sleep(random.uniform(0.1, 0.5))
        if random.random() < cfg.fail_rate:
            return self.json(500, {**self.identity(target, baggage), "error": "injected failure"})
        return self.json(200, self.identity(target, baggage))

    # --- calling downstream ----------------------------------------------------
    async def call(self, target, baggage, forward=False):
        """GET the downstream URL; with `forward`, the same path and query there (a chain of calls)."""
        cfg, me = self.cfg, self.identity(target, baggage)
        if not cfg.call_url:
            return self.json(404, {"self": me, "error": "DEMO_CALL is not set"})
        url = cfg.call_url
        if forward:
            parts = urllib.parse.urlsplit(cfg.call_url)
            url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, *urllib.parse.urlsplit(target)[2:4], ""))
        try:
            headers = self.outbound_headers(baggage)
            status, raw = await asyncio.wait_for(self.fetch(url, cfg.call_host, headers), 5)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            return self.json(502, {"self": me, "error": f"{type(e).__name__}: {e}"})
        if not 200 <= status < 300:
            return self.json(502, {"self": me, "error": f"downstream answered {status}",
                                   "downstreamAnswer": raw[:2000].decode("utf-8", "replace")})
        try:
            downstream = json.loads(raw)
        except ValueError:
            downstream = raw.decode("utf-8", "replace")
        return self.json(200, {"self": me, "downstream": downstream})

    def outbound_headers(self, baggage):
        """The color for the downstream call: only a call through the mesh carries it."""
        if sdk is not None:
            with sdk.use_color(sdk.parse_baggage(baggage)):
                return sdk.outbound_headers(self.cfg.call_url)
        return {"baggage": baggage} if baggage and self.cfg.via_mesh else {}

    async def fetch(self, url, host_header, headers=None):
        """GET over a kept-alive connection; once more on a fresh one if the reused one was closed."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"cannot call {url!r}: expected http://HOST[:PORT]/PATH")
        key = (parts.hostname, parts.port or 80)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        request = (f"GET {path} HTTP/1.1\r\nHost: {host_header or parts.netloc}\r\n{extra}\r\n").encode("latin-1")
        idle = self.pool.setdefault(key, [])
        for attempt in (1, 2):
            # The retry takes a new connection: other pooled ones may have been closed by the same event.
            reused = attempt == 1 and bool(idle)
            reader, writer = idle.pop() if reused else await asyncio.open_connection(*key)
            try:
                writer.write(request)
                await writer.drain()
                status, body, keep = await read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                writer.close()
                if not reused or attempt == 2:
                    raise ConnectionError(f"{type(e).__name__}: {e}") from e
                continue
            except BaseException:
                writer.close()
                raise
            if keep and len(idle) < 64:
                idle.append((reader, writer))
            else:
                writer.close()
            return status, body
        raise AssertionError("unreachable")

    # --- stopping --------------------------------------------------------------
    def close_idle(self):
        for conn in list(self.connections):
            if not conn.busy:
                conn.writer.close()
        for idle in self.pool.values():
            for _, writer in idle:
                writer.close()
            idle.clear()


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip().lower()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return int(parts[1]), body[:1 << 20], headers.get("connection") != "close"


def record_start(env):
    """Append one line per start to the instance's data dir: it survives restarts and upgrades."""
    data_dir = env.get("BALLAST_DATA_DIR")
    if data_dir:
        with open(os.path.join(data_dir, "starts.log"), "a") as fh:
            fh.write(f"{env.get('BALLAST_REVISION', '')} {os.getpid()}\n")


async def serve(cfg):
    app = App(cfg)
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    try:
        server = await asyncio.start_server(app.handle, cfg.host, cfg.port, family=family, backlog=1024,
                                            reuse_address=True, limit=MAX_HEAD)
    except OSError as e:
        fail(f"cannot listen on {cfg.host}:{cfg.port}: {e}", code=1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {cfg.host}:{server.sockets[0].getsockname()[1]}", flush=True)
    record_start(os.environ)
    await stop.wait()

    app.draining = True
    server.close()  # stop accepting: new connections are refused while we drain
    deadline = time.monotonic() + cfg.grace
    while True:
        app.close_idle()
        if not app.connections:
            break
        if time.monotonic() >= deadline:
            print(f"app.py: grace period of {cfg.grace:g}s expired with {len(app.connections)} connection(s) "
                  "still open", file=sys.stderr, flush=True)
            os._exit(1)
        await asyncio.sleep(0.02)
    print("stopped", flush=True)
    return 0


def main():
    cfg = load_config(os.environ)
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
