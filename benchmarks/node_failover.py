"""Node death: how long until its endpoints are out of every routing table, and until its instances' replacements
serve in the same cell.

Starts `ballast up` (2 cells x 2 nodes, nodeGraceSeconds 4, agents heartbeating every second) with `back`
(2 + 2 instances) and `front` (2 + 2, calling back through its sidecar) under continuous load through the
gateway. Each trial pauses `ballast up` (so nobody restarts anything), SIGKILLs one node's agent and every
instance and sidecar on it (a dead host), and polls the API every 20 ms for:

  out    every endpoint of the dead node's `back` instances is `removed` and acknowledged by every other
         traffic component (nothing routes to it any more)
  ready  as many new `back` instances as died are ready in the same cell, their endpoints acknowledged by
         every component (they take traffic)

then resumes `ballast up` (which restarts the agent with its old state: its stale instances are fenced) and waits
for the platform to settle before the next trial, alternating the victim between the cells. Figures are seconds
from the SIGKILL. Beside them, Kubernetes' defaults: a node is NotReady after node-monitor-grace-period (40 s)
and its pods are evicted after a further pod-eviction-timeout (5 min), about 5 min 40 s before a replacement
is even created.

    .venv/bin/python benchmarks/node_failover.py [--trials 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._harness import code_version, loadavg, percentile  # noqa: E402
from tests.e2e.conftest import Platform, eventually, start_platform  # noqa: E402
from tests.e2e.test_node_lifecycle import Load, deploy, kill_host  # noqa: E402
from tests.e2e.test_releases import Api  # noqa: E402

KUBERNETES_DEFAULT = 40.0 + 300.0


def _endpoints(api: Api) -> dict[str, Any]:
    return {e["metadata"]["name"]: e["status"] for e in api.get("/v1/apps/back/endpoints")["items"]}


def trial(platform: Platform, api: Api, victim: str) -> tuple[float, float]:
    backs = {i["metadata"]["name"]: i["status"] for i in api.instances("back")}
    doomed = [i for i, s in backs.items() if s["node"] == victim]
    if not doomed:
        raise RuntimeError(f"no back instance on {victim}")
    cell = next(s["cell"] for s in backs.values() if s["node"] == victim)
    assert platform.proc is not None
    os.kill(platform.proc.pid, signal.SIGSTOP)
    out = ready = None
    try:
        killed = time.time()
        kill_host(platform, victim)
        while ready is None or out is None:
            if time.time() - killed > 120:
                raise RuntimeError(f"trial on {victim} did not finish in 120 s")
            eps = _endpoints(api)
            now = time.time()
            if out is None and all(eps.get(i, {"state": "removed", "pending": []})["state"] == "removed"
                                   and not eps.get(i, {"pending": []})["pending"] for i in doomed):
                out = now - killed
            fresh = [i["metadata"]["name"] for i in api.instances("back")
                     if i["metadata"]["name"] not in backs and i["status"]["cell"] == cell]
            serving = [i for i in fresh if i in eps and eps[i]["state"] == "ready" and not eps[i]["pending"]]
            if ready is None and len(serving) >= len(doomed):
                ready = now - killed
            time.sleep(0.02)
    finally:
        os.kill(platform.proc.pid, signal.SIGCONT)

    def settled() -> None:
        node = api.get(f"/v1/nodes/{victim}")
        assert node["status"]["state"] == "Ready", node["status"]
        items = api.instances("back")
        assert len(items) == 4 and all(i["status"]["ready"] for i in items), [i["status"] for i in items]
        assert not [i for i in items if i["metadata"]["name"] in doomed]
    eventually(settled, f"{victim} back and the platform settled", timeout=120)
    return out, ready


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ballast-bench-nodes-"))
    platforms = start_platform(root, "127.0.176.2")
    platform = next(platforms)
    try:
        api = deploy(platform)
        load = Load(platform.gateway_port).start()
        outs, readies = [], []
        for k in range(args.trials):
            cell = ("cell-a", "cell-b")[k % 2]
            hosts = sorted({i["status"]["node"] for i in api.instances("back") if i["status"]["cell"] == cell})
            victim = hosts[(k // 2) % len(hosts)]
            out, ready = trial(platform, api, victim)
            outs.append(out)
            readies.append(ready)
            print(f"trial {k + 1}: {victim} out of routing {out:.2f}s, replacement serving {ready:.2f}s", flush=True)
        load.finish()
    finally:
        try:
            next(platforms)
        except StopIteration:
            pass
    print(f"\nnode death ({args.trials} trials, nodeGraceSeconds 4, heartbeat 1 s), seconds from SIGKILL of the host:")
    print(f"  endpoints out of every routing table   p50 {percentile(outs, 50):.2f}  p99 {percentile(outs, 99):.2f}")
    print(f"  replacements ready in the same cell     p50 {percentile(readies, 50):.2f}  "
          f"p99 {percentile(readies, 99):.2f}")
    print(f"  Kubernetes defaults (40 s grace + 5 min eviction): ~{KUBERNETES_DEFAULT:.0f} s before a replacement "
          f"is created; ratio p50 {KUBERNETES_DEFAULT / percentile(readies, 50):.0f}x")
    print(f"  load through the gateway and one sidecar hop: {load.answered} calls, failed first time "
          f"{len(load.first_failures)}, failed when retried {len(load.lost)}")
    print(f"  commit {code_version()}, load average {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
