"""Bad HA settings are refused at start, with a message saying why and a non-zero exit: several replicas without
PostgreSQL, a lease not clearly longer than its renewal interval."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ballast.cli.main import cli


@pytest.mark.parametrize("args, says", [
    (["up", "--replicas", "3"], "--replicas 3 needs a PostgreSQL store"),
    (["up", "--replicas", "2", "--store", "sqlite:///x.db"], "--replicas 2 needs a PostgreSQL store"),
    (["up", "--replicas", "3", "--store", "postgresql://u@h/db", "--lease-seconds", "2", "--renew-seconds", "1"],
     "--lease-seconds 2 is not clearly longer than --renew-seconds 1"),
    (["server", "--lease-seconds", "1", "--renew-seconds", "1"], "--lease-seconds 1 is not clearly longer"),
    (["server", "--lease-seconds", "1.5"], "--lease-seconds 1.5 is not clearly longer than --renew-seconds 1"),
])
def test_refused_at_start_saying_why(args: list[str], says: str, tmp_path: Path) -> None:
    if args[0] == "up":
        args = [*args, "--data-dir", str(tmp_path / "data")]
    else:
        args = [*args, "--store", f"sqlite:///{tmp_path / 'b.db'}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert says in result.output, result.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "b.db").exists(), "nothing was started or written"
