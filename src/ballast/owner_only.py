"""The platform's secrets are its owner's alone: tokens, client configs, the SQLite store and its journals.

Entry points (`ballast up`, `ballast server`, `ballast agent`, `ballast gateway`) call `restrict_new_files()`
first, so everything they and their children create is owner-only from birth, and `make_private()` on what an
earlier version may have left readable. `read_token()` is how a component gets its credential: from a file
only its owner can read, or (for compatibility) from BALLAST_TOKEN, which it then removes from its own
environment so that no child process ever sees it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import MutableMapping
from pathlib import Path

from ballast.errors import BallastError

SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


class SecretExposed(BallastError):
    status = 2


def restrict_new_files() -> None:
    """Files and directories this process (and its children) create: owner-only (umask 077)."""
    os.umask(0o077)


def make_private(*paths: Path) -> None:
    """Owner-only modes for what exists of `paths`: 0700 for directories, 0600 for files."""
    for path in paths:
        try:
            os.chmod(path, 0o700 if path.is_dir() else 0o600)
        except FileNotFoundError:
            pass


def sqlite_files(store_url: str) -> list[Path]:
    """The database file of a `sqlite:///PATH` store and its journals (none for another store)."""
    if not store_url.startswith("sqlite:///"):
        return []
    database = store_url.removeprefix("sqlite:///")
    return [Path(database + suffix) for suffix in SQLITE_COMPANIONS]


def read_token(token_file: Path | None, environ: MutableMapping[str, str], option: str = "--token-file") -> str:
    """The credential from `token_file` (refused unless only its owner may read it) or BALLAST_TOKEN; either
    way BALLAST_TOKEN leaves `environ`, so children never inherit it. Empty when there is none."""
    from_env = environ.pop("BALLAST_TOKEN", "")
    if token_file is None:
        return from_env.strip()
    st = token_file.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.geteuid():
        raise SecretExposed(f"{option} {token_file}: got mode {stat.S_IMODE(st.st_mode):04o} owned by uid "
                            f"{st.st_uid}, expected mode 0600 owned by this user (uid {os.geteuid()}); "
                            f"chmod 600 {token_file}")
    return token_file.read_text().strip()
