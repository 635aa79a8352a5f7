"""A node's or gateway's own credential: exchanged once for an admin's join token, then kept in a file.

The file (mode 0600, written whole or not at all) is what the agent or gateway reads on every later start; the
join token is good for one exchange only, so it is used only while there is no credential file yet.
"""

from __future__ import annotations

import os
from pathlib import Path

from ballast.client import Client
from ballast.errors import BallastError

CREDENTIAL_FILE = "credential"   # in the agent's or gateway's data dir


class NoCredential(BallastError):
    status = 2


def read_credential(path: Path) -> str | None:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    return token or None


def write_credential(path: Path, token: str) -> None:
    """Write the credential readable by its owner only, atomically (a crash leaves the old file or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def join(server: str, kind: str, name: str, join_token: str, credential_file: Path) -> dict[str, str]:
    """Exchange `join_token` for `kind`/`name`'s credential and write it to `credential_file`; the answer names
    the credential's id (its secret is only in the file)."""
    async with Client(server, join_token) as client:
        joined = await client.post("/v1/join", {"kind": kind, "name": name})
    write_credential(credential_file, str(joined["token"]))
    return {"user": str(joined["user"]), "id": str(joined["id"]), "file": str(credential_file)}


async def component_credential(server: str, kind: str, name: str, credential_file: Path,
                               join_token: str | None) -> str:
    """The credential in `credential_file`; on the first start (no file yet) got by joining with `join_token`."""
    token = read_credential(credential_file)
    if token is not None:
        return token
    if not join_token:
        raise NoCredential(f"no credential in {credential_file} and no join token: ask an admin for one "
                           f"('ballast node join-token create --{kind} {name}') and pass it with --join-token")
    await join(server, kind, name, join_token, credential_file)
    token = read_credential(credential_file)
    assert token is not None
    return token
