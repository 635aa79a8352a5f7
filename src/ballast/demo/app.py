#!/usr/bin/env python3
"""Ballast demo service: a single-file, standard-library-only HTTP server.

Shipped as the sample artifact and run with ``python3 app.py``. JSON answers
report the identity Ballast injects (BALLAST_INSTANCE_ID, BALLAST_APP,
BALLAST_CELL, BALLAST_ZONE, BALLAST_REVISION, BALLAST_NODE / BALLAST_NODE_IP).

Endpoints: GET /healthz, GET /slow?ms=N (cap 10000), GET /call, and any other
GET path answers the identity JSON. Environment knobs: PORT (required), HOST
(127.0.0.1), GREETING (hello), DEMO_LATENCY_PROFILE (none | realistic: 20% of
requests take 100-500 ms), DEMO_FAIL_RATE (0..1 of identity answers are 500),
DEMO_UNHEALTHY=1 (/healthz answers 503), DEMO_CALL / DEMO_CALL_HOST (URL and
optional Host header fetched by /call), DEMO_CALL_SERVICE (a service /call
reaches through the sidecar, BALLAST_MESH_URL, by name), DEMO_GRACE_SECONDS (10).

/call keeps one connection per thread to what it calls and reuses it; like any
HTTP client, it retries once on a fresh connection when a reused one turns out
to be closed before an answer came (the server may close an idle connection).

On SIGTERM/SIGINT it stops accepting, closes idle keep-alive connections, lets
in-flight requests finish and exits 0; exit 1 if the grace period runs out
first, exit 2 on bad configuration.
"""
import http.client
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

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
    grace = env_float(env, "DEMO_GRACE_SECONDS", 10.0)
    if not grace >= 0:
        fail(f"DEMO_GRACE_SECONDS must be >= 0, got {grace}")
    latency = env.get("DEMO_LATENCY_PROFILE", "").strip().lower() or "none"
    if latency not in ("none", "realistic"):
        fail(f"DEMO_LATENCY_PROFILE must be 'none' or 'realistic', got {latency!r}")
    identity = {
        "app": env.get("BALLAST_APP"),
        "instance": env.get("BALLAST_INSTANCE_ID"),
        "revision": env.get("BALLAST_REVISION"),
        "cell": env.get("BALLAST_CELL"),
        "zone": env.get("BALLAST_ZONE"),
        "node": env.get("BALLAST_NODE") or env.get("BALLAST_NODE_IP"),
        "greeting": env.get("GREETING", "hello"),
    }
    cfg = SimpleNamespace(
        host=env.get("HOST", "").strip() or "127.0.0.1", port=port, identity=identity,
        latency=latency, fail_rate=fail_rate, grace=grace,
        unhealthy=env.get("DEMO_UNHEALTHY", "").strip().lower() in ("1", "true", "yes", "on"),
        call_url=env.get("DEMO_CALL", "").strip(), call_host=env.get("DEMO_CALL_HOST", "").strip())
    service = env.get("DEMO_CALL_SERVICE", "").strip()
    if service:
        mesh = env.get("BALLAST_MESH_URL", "").strip()
        if not mesh:
            fail("DEMO_CALL_SERVICE needs BALLAST_MESH_URL (set by Ballast's agent)")
        cfg.call_url, cfg.call_host = mesh.rstrip("/") + "/", service
    return cfg


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: connections are reused
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle holds the body back until the
    # peer's delayed ACK (~40 ms) on every reused connection.
    disable_nagle_algorithm = True
    server_version = "ballast-demo/1"
    timeout = 120  # idle keep-alive connections are dropped after this many seconds

    def log_message(self, format, *args):  # no per-request logging
        pass

    def parse_request(self):  # a request line has arrived: the connection is busy
        self.server.set_busy(self.request, True)
        return super().parse_request()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        finally:
            self.server.set_busy(self.request, False)

    def reply(self, status, body, content_type="text/plain; charset=utf-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.server.draining.is_set():
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status, obj):
        self.reply(status, json.dumps(obj).encode() + b"\n", "application/json")

    def identity(self):
        return {**self.server.cfg.identity, "path": self.path, "pid": os.getpid()}

    def do_GET(self):
        cfg = self.server.cfg
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            return self.reply(503, b"unhealthy") if cfg.unhealthy else self.reply(200, b"ok")
        if url.path == "/call":
            return self.call()
        if url.path == "/slow":
            try:
                ms = int(urllib.parse.parse_qs(url.query).get("ms", ["0"])[0])
            except ValueError:
                return self.reply_json(400, {"error": "ms must be an integer"})
            time.sleep(min(max(ms, 0), MAX_SLOW_MS) / 1000)
        elif cfg.latency == "realistic" and random.random() < 0.2:
            time.sleep(random.uniform(0.1, 0.5))
        if random.random() < cfg.fail_rate:
            return self.reply_json(500, {**self.identity(), "error": "injected failure"})
        self.reply_json(200, self.identity())

    def call(self):
        cfg, me = self.server.cfg, self.identity()
        if not cfg.call_url:
            return self.reply_json(404, {"self": me, "error": "DEMO_CALL is not set"})
        try:
            status, raw = fetch(cfg.call_url, cfg.call_host)
        except (OSError, ValueError, http.client.HTTPException) as e:
            return self.reply_json(502, {"self": me, "error": f"{type(e).__name__}: {e}"})
        if not 200 <= status < 300:
            return self.reply_json(502, {"self": me, "error": f"downstream answered {status}"})
        try:
            downstream = json.loads(raw)
        except ValueError:
            downstream = raw.decode("utf-8", "replace")
        self.reply_json(200, {"self": me, "downstream": downstream})


_local = threading.local()


def fetch(url, host_header):
    """GET over this thread's kept-alive connection; once more on a fresh one if the reused one was closed."""
    parts = urllib.parse.urlsplit(url)
    key = (parts.hostname, parts.port or 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Host": host_header} if host_header else {}
    for attempt in (1, 2):
        conn = getattr(_local, "conns", {}).get(key)
        reused = conn is not None
        if conn is None:
            conn = http.client.HTTPConnection(*key, timeout=5)
            _local.conns = {**getattr(_local, "conns", {}), key: conn}
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read(1 << 20)
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                _local.conns.pop(key, None)
            return resp.status, body
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            _local.conns.pop(key, None)
            if not reused or attempt == 2:
                raise
        except BaseException:
            conn.close()
            _local.conns.pop(key, None)
            raise


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # note: socketserver never joins daemon threads, so we track them
    allow_reuse_address = True

    def __init__(self, address, cfg):
        self.cfg = cfg
        self.draining = threading.Event()
        self.lock = threading.Lock()
        self.conns = {}  # accepted socket -> busy (serving a request)?
        super().__init__(address, Handler)

    def server_bind(self):  # skip HTTPServer's reverse-DNS lookup (socket.getfqdn)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address):  # runs in the accept loop
        with self.lock:
            self.conns[request] = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.set_gone(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.set_gone(request)

    def handle_error(self, request, client_address):
        # A peer closing or resetting its connection is routine (proxies recycle idle connections);
        # a traceback for each one would cost more than the request did.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)

    def set_busy(self, sock, busy):
        with self.lock:
            if sock in self.conns:
                self.conns[sock] = busy

    def set_gone(self, sock):
        with self.lock:
            self.conns.pop(sock, None)

    def close_idle(self, force=False):
        """Wake idle keep-alive readers (every connection if forced); return how many remain."""
        with self.lock:
            for sock, busy in self.conns.items():
                if force or not busy:
                    try:
                        sock.shutdown(socket.SHUT_RDWR if force else socket.SHUT_RD)
                    except OSError:
                        pass
            return len(self.conns)


def record_start(env):
    """Append one line per start to the instance's data dir: it survives restarts and upgrades."""
    data_dir = env.get("BALLAST_DATA_DIR")
    if data_dir:
        with open(os.path.join(data_dir, "starts.log"), "a") as fh:
            fh.write(f"{env.get('BALLAST_REVISION', '')} {os.getpid()}\n")


def main():
    cfg = load_config(os.environ)
    if ":" in cfg.host:
        Server.address_family = socket.AF_INET6
    try:
        server = Server((cfg.host, cfg.port), cfg)
    except OSError as e:
        fail(f"cannot listen on {cfg.host}:{cfg.port}: {e}", code=1)

    def on_signal(signum, frame):
        if not server.draining.is_set():
            server.draining.set()  # shutdown() blocks until serve_forever returns: not here
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"listening on {cfg.host}:{server.server_address[1]}", flush=True)
    record_start(os.environ)
    server.serve_forever(poll_interval=0.1)

    server.socket.close()  # stop accepting: new connections are refused while we drain
    deadline = time.monotonic() + cfg.grace
    while server.close_idle():
        if time.monotonic() >= deadline:
            busy = server.close_idle(force=True)
            print(f"app.py: grace period of {cfg.grace:g}s expired with {busy} connection(s) "
                  "still open", file=sys.stderr, flush=True)
            os._exit(1)  # sleeping handler threads cannot be interrupted
        time.sleep(0.02)
    server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
