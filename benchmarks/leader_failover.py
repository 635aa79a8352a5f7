"""Leader failover: SIGKILL the leading `ballast server` replica, time until another one acts as leader.

Three replicas (`ballast server`) share a fresh PostgreSQL database (BALLAST_TEST_PG_URL names the server; the
database is created and dropped here). Each trial SIGKILLs the replica holding the `controllers` lease and polls
the database every 10 ms for two facts:

  epoch   the lease row's epoch grew (another replica took the lease over)
  acting  the new leader's `leader.acquired` audit record committed: its first write as leader, made through
          the same fenced path as every controller write (it commits only while the lease is its own)

then restarts the killed replica and waits for it to answer before the next trial. The figures are seconds from
the SIGKILL. With a lease of L s renewed every R s, a takeover is due between L - R and L s after the kill (the
last renewal was up to R s before it), plus up to one standby retry interval.

    BALLAST_TEST_PG_URL=postgresql://... .venv/bin/python benchmarks/leader_failover.py [--trials 10]
        [--lease-seconds 3] [--renew-seconds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._harness import (  # noqa: E402
    BenchFailed, Child, code_version, free_port, kill_leftovers, loadavg, percentile, run_in_workdir,
)

REPLICAS = 3


def _connect_args(url: str) -> dict[str, object]:
    u = make_url(url)
    return {"user": u.username, "password": u.password, "host": u.host or "127.0.0.1", "port": u.port or 5432,
            "database": u.database or "postgres"}


async def _admin(base: str, sql: str) -> None:
    import asyncpg
    conn = await asyncpg.connect(**_connect_args(base))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _wait(fact, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not fact():
        if time.monotonic() > deadline:
            raise BenchFailed(f"not true within {timeout:g}s: {what}")
        time.sleep(0.05)


async def _trials(url: str, replicas: list[Child], ports: list[int], trials: int) -> list[tuple[float, float, str]]:
    import asyncpg
    conn = await asyncpg.connect(**_connect_args(url))
    results = []
    try:
        for n in range(trials):
            row = None
            deadline = time.monotonic() + 30
            while row is None or row["expires_at"] <= time.time():
                row = await conn.fetchrow("SELECT holder, epoch, expires_at FROM leases WHERE name = 'controllers'")
                if time.monotonic() > deadline:
                    raise BenchFailed("no replica took the lease")
                await asyncio.sleep(0.05)
            holder, epoch = row["holder"], int(row["epoch"])
            port = int(holder.split("/")[0].rsplit(":", 1)[1])
            index = ports.index(port)
            seen = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM audit"))
            killed = time.monotonic()
            os.kill(int(holder.rsplit("/", 1)[1]), signal.SIGKILL)
            took = acted = None
            new_holder = ""
            while acted is None:
                now = time.monotonic()
                if now - killed > 30:
                    raise BenchFailed(f"trial {n + 1}: no new leader within 30 s")
                if took is None:
                    current = await conn.fetchrow("SELECT holder, epoch FROM leases WHERE name = 'controllers'")
                    if int(current["epoch"]) > epoch:
                        took, new_holder = now - killed, current["holder"]
                if took is not None:
                    record = await conn.fetchval(
                        "SELECT seq FROM audit WHERE action = 'leader.acquired' AND seq > $1 LIMIT 1", seen)
                    if record is not None:
                        acted = time.monotonic() - killed
                await asyncio.sleep(0.01)
            results.append((took, acted, f"{holder} -> {new_holder}"))
            print(f"trial {n + 1:2d}: epoch {epoch} -> {epoch + 1}: lease taken {took:6.3f} s, new leader acting "
                  f"{acted:6.3f} s after SIGKILL ({holder} -> {new_holder})", flush=True)
            replicas[index].stop(signal.SIGKILL, 1)   # reaped
            replicas[index].start()
            _wait(lambda: _healthy(port), f"replica on {port} answers again")
            await asyncio.sleep(1.0)   # let the new leader renew once: each trial kills a leader in its stride
    finally:
        await conn.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--renew-seconds", type=float, default=1.0)
    args = parser.parse_args()
    base = os.environ.get("BALLAST_TEST_PG_URL")
    if not base:
        print("set BALLAST_TEST_PG_URL (scripts/postgres-for-tests.sh prints one)", file=sys.stderr)
        return 2

    def body(work: Path) -> None:
        name = "ballast_bench_" + secrets.token_hex(4)
        asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        ports = [free_port() for _ in range(REPLICAS)]
        replicas = [Child([sys.executable, "-m", "ballast", "server", "--store", url, "--listen", f"127.0.0.1:{p}",
                           "--bootstrap-token-file", str(work / "admin-token"),
                           "--lease-seconds", str(args.lease_seconds), "--renew-seconds", str(args.renew_seconds)],
                          work / f"server-{i}.log") for i, p in enumerate(ports)]
        print(f"code: {code_version()}; load average before start: {loadavg()}")
        print(f"{REPLICAS} replicas of `ballast server` on PostgreSQL, lease {args.lease_seconds:g} s, renewed every "
              f"{args.renew_seconds:g} s; {args.trials} trials of SIGKILL leader", flush=True)
        try:
            for child, port in zip(replicas, ports):   # the first alone: it makes the schema
                child.start()
                _wait(lambda: _healthy(port), f"replica on {port} answers")
            results = asyncio.run(_trials(url, replicas, ports, args.trials))
        finally:
            for child in replicas:
                child.stop(signal.SIGTERM, 10)
            kill_leftovers(work)
            asyncio.run(_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        took = [r[0] for r in results]
        acted = [r[1] for r in results]
        print(f"\nseconds from SIGKILL of the leader (n={len(results)}):   p50     p99     max     min")
        for label, values in (("lease taken over (epoch + 1)", took), ("new leader acting (first write)", acted)):
            print(f"  {label:<34} {percentile(values, 50):7.3f} {percentile(values, 99):7.3f} "
                  f"{max(values):7.3f} {min(values):7.3f}")
        print(f"configured lease {args.lease_seconds:g} s (renew {args.renew_seconds:g} s): a takeover is due "
              f"{args.lease_seconds - args.renew_seconds:g}-{args.lease_seconds:g} s after the last renewal, plus up "
              f"to {min(0.5, args.renew_seconds):g} s of standby retry; load average after: {loadavg()}")

    return run_in_workdir("ballast-bench-failover-", body)


if __name__ == "__main__":
    sys.exit(main())
