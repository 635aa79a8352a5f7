"""The agent's answer to the leader's liveness probe, from a thread of its own.

Silence alone cannot tell a dead or hung host from a busy agent or a control plane too loaded to receive its
heartbeats in time. When a node has been quiet for half its grace, the leader connects here
(controllers/hearing.py). A thread answers, not the event loop: an agent whose loop is merely busy (starting
many instances) still answers at once, while a frozen process (SIGSTOP, a hung host) or a dead one answers
nothing. The answer is `ok` only while the event loop has ticked within STALLED_SECONDS, so an agent whose
loop is wedged for good is judged like a dead one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

log = logging.getLogger("ballast.agent")

TICK_SECONDS = 0.5
STALLED_SECONDS = 10.0


class Liveness:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port: int | None = None      # bound by `start`, on a port the kernel chooses; reported in heartbeats
        self._sock: socket.socket | None = None
        self._last_tick = time.monotonic()

    def start(self) -> None:
        self._sock = socket.create_server((self.host, 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, args=(self._sock,), name="liveness", daemon=True).start()

    def answer(self) -> bytes:
        stalled = time.monotonic() - self._last_tick
        return b"ok\n" if stalled < STALLED_SECONDS else b"stalled %.1f\n" % stalled

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return   # closed: the agent stops
            try:
                with conn:
                    conn.settimeout(1.0)
                    conn.sendall(self.answer())
            except OSError:
                pass

    async def tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._last_tick = time.monotonic()
            try:
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
            except TimeoutError:
                pass

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._sock, self.port = None, None
