"""The audit checkpoints' file: append-only JSON lines outside the database, one writer at a time.

The server that owns a checkpoint directory holds an exclusive lock on its file for as long as it runs (a
second server pointed at the same directory is refused at start), appends each signed checkpoint as one line
and fsyncs it before it logs it. Readers (the server's own check, an auditor's copy) only read.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ballast.errors import BallastError

FILE_NAME = "checkpoints.jsonl"


class CheckpointFileError(BallastError):
    status = 2


class CheckpointFile:
    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._fd: int | None = None

    def lines(self) -> list[str]:
        """The complete lines: one the writer is appending right now is not read half-written (a line torn by a
        crash is completed with a newline when the next server opens the file, then reported)."""
        try:
            return self.path.read_text(errors="replace").split("\n")[:-1]
        except FileNotFoundError:
            return []

    def open_for_append(self) -> None:
        """Create (or continue) the file and take its lock; refuse, naming the file, when that is impossible."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointFileError(f"audit checkpoints {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointFileError(f"audit checkpoints {self.path}: another server writes checkpoints there "
                                      "(one writer per checkpoint file)") from None
        self._fd = fd
        if created:
            _fsync_dir(self.path.parent)
        elif self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self.append("")  # a line torn by a crash stays (and is reported) but the next one starts clean

    def append(self, line: str) -> None:
        """One line, durable before this returns."""
        assert self._fd is not None, "open_for_append first"
        data = (line + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):
            raise CheckpointFileError(f"audit checkpoints {self.path}: short write ({written} of {len(data)} bytes)")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
