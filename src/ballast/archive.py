"""Reading an artifact archive within its limits, as a stream: checked on push, unpacked by the agent.

Both sides walk the archive member by member and apply `core.archive`'s rules before a member's data is
read: a refusal costs at most the headers read so far, never the expansion an archive bomb promises. The
decompressed stream itself is capped too, so a header that claims little but carries much (a huge PAX
record) is refused as well. Blocking work: callers run it in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import zlib
from pathlib import Path

from ballast.core.archive import ArchiveLimits, Kind, Tally, member_problem
from ballast.errors import FieldProblem, InvalidInput

FORMAT = "a gzip-compressed tar archive (what 'ballast artifact push DIR' packs)"


class _Capped(io.RawIOBase):
    """The decompressed stream, refused once it grows past what a valid archive within the limits could be."""

    def __init__(self, inner: gzip.GzipFile, cap: int) -> None:
        self.inner, self.cap, self.read_so_far = inner, cap, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(min(len(buffer), self.cap + 1 - self.read_so_far))
        self.read_so_far += len(data)
        if self.read_so_far > self.cap:
            raise _Refused(f"more than {self.cap} bytes decompressed",
                           f"an archive that unpacks to at most {self.cap} bytes, headers included")
        buffer[:len(data)] = data
        return len(data)


class _Refused(Exception):
    def __init__(self, value: str, expected: str) -> None:
        super().__init__(expected)
        self.value, self.expected = value, expected


def _kind(member: tarfile.TarInfo) -> Kind:
    if member.issym():
        return Kind.SYMLINK
    if member.islnk():
        return Kind.HARDLINK
    if member.isdir():
        return Kind.DIRECTORY
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.issparse():
        return Kind.FILE
    return Kind.OTHER


def walk(blob: bytes, limits: ArchiveLimits, into: Path | None = None) -> Tally:
    """Check every member of `blob` (and, with `into`, unpack it there, one member after the other); the tally
    of what it holds. InvalidInput naming the member and the rule it breaks; with `into`, nothing is left there
    then (the caller unpacks into a staging directory it owns)."""
    if len(blob) > limits.max_bytes:
        raise _invalid(f"an archive of at most {limits.max_bytes} bytes", f"{len(blob)} bytes")
    tally = Tally(limits)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob), mode="rb") as gz, \
                tarfile.open(fileobj=io.BufferedReader(_Capped(gz, tally.stream_allowance())), mode="r|") as tar:
            for member in tar:
                problem = member_problem(member.name, _kind(member), member.linkname)
                if problem is None:
                    problem = tally.add(member.size if member.isreg() else 0)
                if problem is not None:
                    raise _Refused(f"member {member.name}", problem)
                if into is not None:
                    tar.extract(member, into, filter="data")
    except _Refused as refused:
        _clean(into)
        raise _invalid(refused.expected, refused.value) from None
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, ValueError) as exc:  # ValueError: a header
        # tarfile cannot decode (a number field that is no number, a name it cannot encode)
        _clean(into)
        raise _invalid(FORMAT, f"unreadable: {exc}") from None
    except OSError as exc:
        _clean(into)
        raise InvalidInput(f"artifact cannot be unpacked: {exc}") from None
    return tally


def _clean(into: Path | None) -> None:
    if into is not None:
        shutil.rmtree(into, ignore_errors=True)


def _invalid(expected: str, got: str) -> InvalidInput:
    """`got`: a member's name, or what is wrong with the archive as a whole."""
    return InvalidInput(f"invalid artifact: {got!r}; expected {expected}", problems=[FieldProblem("body", got, expected)])
