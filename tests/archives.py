"""Artifact archives for tests, built member by member: what the CLI packs, and what it never would."""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    link: str = ""
    size: int | None = None      # a header that claims another size than the data (for streamed zeros: data=b"")
    zeros: int = 0               # that many zero bytes of content, streamed (a bomb without holding it in memory)


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def targz(*entries: Entry) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for e in entries:
                info = tarfile.TarInfo(e.name)
                info.type = e.type
                info.linkname = e.link
                info.mode = 0o755 if e.type == tarfile.DIRTYPE else 0o644
                if e.type == tarfile.REGTYPE:
                    info.size = e.zeros or len(e.data)
                    tar.addfile(info, io.BufferedReader(_Zeros(e.zeros)) if e.zeros else io.BytesIO(e.data))
                else:
                    tar.addfile(info)
    return out.getvalue()


def app_package(body: bytes = b"print('hello')\n") -> bytes:
    """A valid package: a directory with one file."""
    return targz(Entry("app", type=tarfile.DIRTYPE), Entry("app/main.py", body))
