"""Spec of the load generator: every exception is one failed request, and no worker ends before it is stopped."""

from __future__ import annotations

import asyncio
import itertools

from ballast.loadgen import Load, Target

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",   # oversized header
    b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n",                               # malformed length
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"SPDY/9 what\r\n\r\n",                                                             # junk
    b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
]


async def test_every_bad_answer_is_one_failure_and_every_worker_lives_to_the_end() -> None:
    answers = itertools.cycle(ANSWERS)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                answer = next(answers)
                writer.write(answer)
                await writer.drain()
                if answer is not ANSWERS[0]:
                    break   # after a bad answer the client must open a new connection anyway
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    load = Load([Target("t", "127.0.0.1", port, "x", connections=3)], timeout=2)
    load.start()
    began = asyncio.get_running_loop().time()
    while load.requests < 200:
        await asyncio.sleep(0.01)
    middle = asyncio.get_running_loop().time()
    await asyncio.sleep(0.05)
    alive, started = load.workers_alive, load.workers_started
    await load.stop()
    server.close()
    await server.wait_closed()
    assert started == 3 and alive == 3, "no worker ended on an answer it could not parse"
    kinds = set(load.failures())
    assert {"t: oversized response header", "t: malformed Content-Length", "t: junk response",
            "t: HTTP 503"} <= kinds, kinds
    ok = sum(1 for t in load.tallies.values() for s in t.samples if s.ok)
    assert load.failed + ok == load.requests, "every request is counted once, as what it was"
    first, second = load.window(until=middle), load.window(since=middle)
    assert first.requests + second.requests == load.requests and first.failed + second.failed == load.failed
    assert load.window(since=began).requests == load.requests


async def test_every_request_carries_the_targets_headers() -> None:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(ANSWERS[0])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    load = Load([Target("t", "127.0.0.1", port, "shop.local", connections=1,
                        headers=(("baggage", "stress=true,env=gray"), ("x-a", "1")))], timeout=2)
    load.start()
    while load.requests < 20:
        await asyncio.sleep(0.01)
    await load.stop()
    server.close()
    await server.wait_closed()
    assert seen and all(b"\r\nHost: shop.local\r\n" in head and b"\r\nbaggage: stress=true,env=gray\r\n" in head
                        and b"\r\nx-a: 1\r\n" in head for head in seen), seen[:1]


def test_the_load_command_refuses_a_tag_or_header_it_cannot_send() -> None:
    from click.testing import CliRunner

    from ballast.cli.main import cli
    for args, words in ((["--tag", "bad key=1"], "expected KEY=VALUE"), (["--tag", "k=v v"], "--tag"),
                        (["--header", "nocolon"], "expected 'NAME: VALUE'")):
        result = CliRunner().invoke(cli, ["load", "http://127.0.0.1:9/", "--duration", "0.1", *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
