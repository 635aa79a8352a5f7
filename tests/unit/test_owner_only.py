"""Spec of how a component gets its credential: from an owner-only file, or from BALLAST_TOKEN, which then
leaves its environment (its children inherit no token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ballast.owner_only import SecretExposed, make_private, read_token, sqlite_files


def _token_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(mode)
    return path


def test_a_token_file_only_its_owner_reads_is_used_and_the_environment_loses_the_token(tmp_path: Path) -> None:
    environ = {"BALLAST_TOKEN": "from-env", "PATH": "/bin"}
    assert read_token(_token_file(tmp_path, 0o600), environ) == "s3cret"
    assert environ == {"PATH": "/bin"}


def test_the_environment_token_is_taken_out_of_the_environment(tmp_path: Path) -> None:
    environ = {"BALLAST_TOKEN": " from-env \n"}
    assert read_token(None, environ) == "from-env" and environ == {}
    assert read_token(None, {}) == ""


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_token_file_others_may_read_is_refused_naming_its_mode(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path, mode)
    with pytest.raises(SecretExposed) as refused:
        read_token(path, {}, "--token-file")
    assert f"--token-file {path}: got mode {mode:04o}" in refused.value.message
    assert "expected mode 0600" in refused.value.message


def test_make_private_sets_owner_only_modes_on_what_exists(tmp_path: Path) -> None:
    db, wal, directory = tmp_path / "b.db", tmp_path / "b.db-wal", tmp_path / "logs"
    db.write_text("")
    wal.write_text("")
    directory.mkdir()
    for path in (db, wal, directory):
        path.chmod(0o755)
    make_private(*sqlite_files(f"sqlite:///{db}"), directory)
    assert [p.stat().st_mode & 0o777 for p in (db, wal, directory)] == [0o600, 0o600, 0o700]
    assert sqlite_files("postgresql://u@h/db") == []
