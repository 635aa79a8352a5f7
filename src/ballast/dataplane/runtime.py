"""HAProxy's runtime API over its UNIX sockets (the worker's stats socket and the master CLI).

`command`: one connection per command (write it, half-close, read the answer to EOF). `session`: many commands
over one connection in HAProxy's interactive mode, each answer ended by its prompt; a node applying a change to
all its sidecars opens one or two connections per sidecar instead of one per command.
Errors become `RuntimeApiError`, so callers never see socket exceptions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ballast.errors import BallastError

class RuntimeApiError(BallastError):
    status = 503


async def command(socket_path: Path | str, line: str, *, timeout: float = 5.0) -> str:
    """Send one command; return HAProxy's answer (which may itself describe a refusal)."""
    _one_per_line([line])
    # Half-closing ends the exchange: HAProxy answers and closes.
    return await _exchange(socket_path, line + "\n", timeout, repr(line), half_close=True)


PROMPT = "\n> "


async def session(socket_path: Path | str, lines: list[str], *, timeout: float = 5.0) -> list[str]:
    """Send `lines` over one connection (interactive mode); return one answer per line, in order."""
    if not lines:
        return []
    _one_per_line(lines)
    text = await _exchange(socket_path, "prompt\n" + "".join(f"{line}\n" for line in lines) + "quit\n", timeout,
                           f"{len(lines)} commands", half_close=False)
    # "\n> " after `prompt`, then each answer followed by "\n> ", then `quit` closes the connection.
    pieces = text.split(PROMPT)
    answers = pieces[1:-1]
    if len(answers) != len(lines) or pieces[-1] != "":
        raise RuntimeApiError(f"HAProxy runtime API at {socket_path}: {len(lines)} commands sent, "
                              f"{len(answers)} answers read: {text[-200:]!r}")
    return answers


def _one_per_line(lines: list[str]) -> None:
    for line in lines:
        if "\n" in line or ";" in line:
            raise ValueError(f"one runtime command per line, got {line!r}")


async def _exchange(socket_path: Path | str, payload: str, timeout: float, what: str, *, half_close: bool) -> str:
    """Write `payload` on a new connection and read HAProxy's answer to EOF."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), timeout)
    except (OSError, TimeoutError) as exc:
        raise RuntimeApiError(f"HAProxy runtime API at {socket_path} is unreachable: {exc!r}") from exc
    try:
        writer.write(payload.encode())
        await writer.drain()
        if half_close:
            writer.write_eof()
        return (await asyncio.wait_for(reader.read(), timeout)).decode(errors="replace")
    except (OSError, TimeoutError) as exc:
        raise RuntimeApiError(f"HAProxy runtime API at {socket_path}: {what} failed: {exc!r}") from exc
    finally:
        writer.close()


def succeeded(line: str, answer: str) -> bool:
    """Did HAProxy do it? It answers in text, not with a status: each command has its own success."""
    text = answer.strip()
    if line.startswith("add server "):
        return "New server registered" in text
    if line.startswith("del server "):
        return "Server deleted" in text
    if line.startswith("set server ") and " addr " in line:
        return text.startswith("IP changed") or "no need to change" in text
    if line.startswith(("set server ", "set map ", "add map ", "del map ")):
        return text == ""
    return True
