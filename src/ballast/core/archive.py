"""What an artifact archive may hold: the pure rules the control plane checks on push and the agent on unpack.

An artifact is a gzip-compressed tar of a directory (what `ballast artifact push` packs). Its members must
stay inside the directory they unpack into (relative paths without `..`, links that point inside), be plain
files, directories or links (no devices, FIFOs or sparse files), and the whole must stay within a count of
members and a total of unpacked bytes. The sizes are the ones each member's header declares: a tar member
unpacks to exactly that many bytes, so counting them before unpacking bounds what reaches the disk.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import Enum

MiB = 2**20


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int = 200 * MiB            # the archive as pushed (compressed)
    max_files: int = 20_000               # members: files, directories and links
    max_unpacked_bytes: int = 512 * MiB   # the sum of the members' sizes, unpacked

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_files, self.max_unpacked_bytes) < 1:
            raise ValueError("artifact limits must be positive")

    @classmethod
    def for_unpacking(cls, max_files: int, max_unpacked_bytes: int) -> "ArchiveLimits":
        """A node's limits: on what an archive unpacks to. Its compressed size was the control plane's to bound;
        here it only has to be what a valid archive within these limits can be (gzip adds well under 1%)."""
        allowance = Tally(cls(max_files=max_files, max_unpacked_bytes=max_unpacked_bytes)).stream_allowance()
        return cls(max_bytes=allowance + allowance // 100, max_files=max_files, max_unpacked_bytes=max_unpacked_bytes)


class Kind(str, Enum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    OTHER = "other"                       # devices, FIFOs, sparse or contiguous files


INSIDE = "a relative path inside the artifact (no '..', not absolute)"
LINK_INSIDE = "a link whose target stays inside the artifact"
PLAIN = "a regular file, a directory or a link (no devices, FIFOs or sparse files)"


def _escapes(path: str) -> bool:
    normal = posixpath.normpath(path)
    return path.startswith("/") or normal == ".." or normal.startswith("../")


def member_problem(name: str, kind: Kind, link: str = "") -> str | None:
    """What is wrong with one member (its name, its kind, a link's target), or None: the expectation it breaks."""
    if not name or "\x00" in name or name.startswith("/") or ".." in name.split("/"):
        return INSIDE
    if kind is Kind.OTHER:
        return PLAIN
    if kind is Kind.SYMLINK and (not link or _escapes(posixpath.join(posixpath.dirname(name), link))):
        return LINK_INSIDE
    if kind is Kind.HARDLINK and (not link or _escapes(link)):
        return LINK_INSIDE
    return None


@dataclass
class Tally:
    """Members and unpacked bytes counted so far; `add` says which limit a further member would break."""

    limits: ArchiveLimits
    files: int = 0
    unpacked_bytes: int = 0

    def add(self, size: int) -> str | None:
        if self.files + 1 > self.limits.max_files:
            return f"at most {self.limits.max_files} files (members) in the archive"
        if self.unpacked_bytes + max(size, 0) > self.limits.max_unpacked_bytes:
            return f"at most {self.limits.max_unpacked_bytes} bytes unpacked"
        self.files += 1
        self.unpacked_bytes += max(size, 0)
        return None

    def stream_allowance(self) -> int:
        """How many decompressed bytes a valid archive within the limits can take: the members' data plus,
        per member, its headers (a long name or a PAX record) and padding, and the end-of-archive blocks.
        More than that is refused before it is read, whatever the headers claim."""
        return self.limits.max_unpacked_bytes + self.limits.max_files * 8 * 512 + MiB
