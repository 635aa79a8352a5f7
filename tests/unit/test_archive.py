"""Spec of what an artifact archive may hold, and of reading one within its limits (push and unpack)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from ballast import archive
from ballast.cli.packaging import pack
from ballast.core.archive import INSIDE, LINK_INSIDE, PLAIN, ArchiveLimits, Kind, Tally, member_problem
from ballast.errors import InvalidInput
from tests.archives import Entry, app_package, targz

MiB = 2**20


@pytest.mark.parametrize(("name", "kind", "link", "expected"), [
    ("app/main.py", Kind.FILE, "", None),
    ("app", Kind.DIRECTORY, "", None),
    ("./app/main.py", Kind.FILE, "", None),
    ("a..b/c", Kind.FILE, "", None),                  # dots inside a name are just a name
    ("/etc/passwd", Kind.FILE, "", INSIDE),
    ("../outside", Kind.FILE, "", INSIDE),
    ("app/../../outside", Kind.FILE, "", INSIDE),
    ("app/..", Kind.DIRECTORY, "", INSIDE),
    ("", Kind.FILE, "", INSIDE),
    ("app/null\x00byte", Kind.FILE, "", INSIDE),
    ("dev/sda", Kind.OTHER, "", PLAIN),
    ("app/current", Kind.SYMLINK, "releases/1", None),
    ("app/up", Kind.SYMLINK, "../app2/x", None),      # app/../app2/x: still inside
    ("app/escape", Kind.SYMLINK, "../../etc", LINK_INSIDE),
    ("app/abs", Kind.SYMLINK, "/etc/passwd", LINK_INSIDE),
    ("app/empty", Kind.SYMLINK, "", LINK_INSIDE),
    ("app/hard", Kind.HARDLINK, "app/main.py", None),
    ("app/hard", Kind.HARDLINK, "../etc/passwd", LINK_INSIDE),
    ("app/hard", Kind.HARDLINK, "/etc/passwd", LINK_INSIDE),
])
def test_member_rules(name: str, kind: Kind, link: str, expected: str | None) -> None:
    """A member stays inside the artifact, is a file, a directory or a link that points inside."""
    assert member_problem(name, kind, link) == expected


def test_the_tally_refuses_the_member_that_would_break_a_limit() -> None:
    tally = Tally(ArchiveLimits(max_files=2, max_unpacked_bytes=100))
    assert tally.add(60) is None
    assert tally.add(41) == "at most 100 bytes unpacked"
    assert tally.add(40) is None
    assert tally.add(0) == "at most 2 files (members) in the archive"
    assert (tally.files, tally.unpacked_bytes) == (2, 100)


def test_what_the_cli_packs_passes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "app.py").write_text("print(1)\n")
    (tmp_path / "sub" / "data.txt").write_text("x" * 1000)
    data, _ = pack(tmp_path)
    tally = archive.walk(data, ArchiveLimits())
    assert (tally.files, tally.unpacked_bytes) == (3, 1009)


BAD = [
    (targz(Entry("/etc/cron.d/x", b"x")), "body", "/etc/cron.d/x", INSIDE),
    (targz(Entry("../../x", b"x")), "body", "../../x", INSIDE),
    (targz(Entry("app/link", type=tarfile.SYMTYPE, link="../../../etc")), "body", "app/link", LINK_INSIDE),
    (targz(Entry("app/h", type=tarfile.LNKTYPE, link="/etc/shadow")), "body", "app/h", LINK_INSIDE),
    (targz(Entry("null", type=tarfile.CHRTYPE)), "body", "null", PLAIN),
    (targz(Entry("fifo", type=tarfile.FIFOTYPE)), "body", "fifo", PLAIN),
    (b"PK\x03\x04 a zip, not a tar.gz", "body", "unreadable", archive.FORMAT),
    (b"\x1f\x8b\x08\x00truncated", "body", "unreadable", archive.FORMAT),
]


@pytest.mark.parametrize(("blob", "path", "value", "expected"), BAD,
                         ids=["absolute", "dotdot", "symlink-out", "hardlink-out", "device", "fifo", "zip", "truncated"])
def test_an_archive_that_breaks_a_rule_is_refused_naming_the_member(blob: bytes, path: str, value: str,
                                                                    expected: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        archive.walk(blob, ArchiveLimits())
    [problem] = refused.value.problems
    assert problem.path == path and value in problem.value and problem.expected == expected


def test_limits_on_size_files_and_unpacked_bytes() -> None:
    many = targz(*(Entry(f"f{i}", b"x") for i in range(11)))
    with pytest.raises(InvalidInput, match="at most 10 files"):
        archive.walk(many, ArchiveLimits(max_files=10))
    assert archive.walk(many, ArchiveLimits(max_files=11)).files == 11
    with pytest.raises(InvalidInput, match="an archive of at most 100 bytes"):
        archive.walk(many, ArchiveLimits(max_bytes=100))


def test_an_archive_bomb_is_refused_before_it_expands() -> None:
    """64 MiB of zeros in a ~65 KB archive, against a 1 MiB limit: refused at the member's header."""
    bomb = targz(Entry("app/zeros", zeros=64 * MiB))
    assert len(bomb) < 200_000
    with pytest.raises(InvalidInput) as refused:
        archive.walk(bomb, ArchiveLimits(max_unpacked_bytes=MiB))
    assert refused.value.problems[0].value == "member app/zeros"
    assert refused.value.problems[0].expected == f"at most {MiB} bytes unpacked"


def test_a_stream_that_inflates_past_what_its_headers_allow_is_cut_off() -> None:
    """A PAX record is no member's data, yet tarfile reads it whole: the decompressed stream has a cap of its own."""
    limits = ArchiveLimits(max_files=1, max_unpacked_bytes=1024)
    cap = Tally(limits).stream_allowance()
    huge_header = targz(Entry("app/x" + "y" * 50, b"x"))  # sanity: a normal archive is far below the cap
    assert archive.walk(huge_header, limits).files == 1
    info = tarfile.TarInfo("app/x")
    info.pax_headers = {"comment": "z" * (cap + 10)}
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w|",
                                                                           format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidInput) as refused:
        archive.walk(out.getvalue(), limits)
    assert "decompressed" in refused.value.problems[0].value


def test_unpacking_stays_within_the_limit_on_disk_and_cleans_up(tmp_path: Path) -> None:
    """Files unpack one after the other; the one that would pass the limit is refused before a byte of it is
    written, and what was unpacked before it is removed."""
    blob = targz(Entry("app", type=tarfile.DIRTYPE), Entry("app/a", zeros=600_000), Entry("app/b", zeros=600_000))
    into = tmp_path / "staging"
    into.mkdir()
    with pytest.raises(InvalidInput, match="app/b"):
        archive.walk(blob, ArchiveLimits(max_unpacked_bytes=1_000_000), into)
    assert not into.exists()
    into.mkdir()
    archive.walk(app_package(b"hi"), ArchiveLimits(), into)
    assert (into / "app" / "main.py").read_bytes() == b"hi"


def test_a_nodes_limits_bound_unpacking_not_the_size_the_control_plane_took() -> None:
    """A node allowing 512 MiB unpacked takes any archive the control plane could have taken within that."""
    node = ArchiveLimits.for_unpacking(max_files=20_000, max_unpacked_bytes=512 * MiB)
    assert node.max_bytes > node.max_unpacked_bytes > ArchiveLimits().max_bytes
    assert (node.max_files, node.max_unpacked_bytes) == (20_000, 512 * MiB)
