"""Spec of the user apps run as: never root, only when the agent can switch, and able to reach its own files."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from ballast.agent.instance_user import (InstanceUser, InstanceUserError, blocked_ancestor, give_directory,
                                         make_data_dir, resolve)

AS_ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody")


def test_an_agent_that_is_not_root_runs_apps_as_itself_and_refuses_another_user() -> None:
    assert resolve(None, NOBODY.pw_uid) == InstanceUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_dir,
                                                         switch=False)
    with pytest.raises(InstanceUserError, match="--instance-user 'root': the agent runs as 'nobody', not root"):
        resolve("root", NOBODY.pw_uid)


@pytest.mark.parametrize(("requested", "why"), [("root", "uid 0 would give apps the agent's secrets"),
                                                 ("no-such-user-x", "no such user on this host")])
def test_a_root_agent_refuses_root_or_an_unknown_user_naming_it(requested: str, why: str) -> None:
    with pytest.raises(InstanceUserError, match=f"--instance-user '{requested}': {why}"):
        resolve(requested, 0)


def test_a_directory_the_apps_user_cannot_enter_is_named() -> None:
    user = InstanceUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_dir, switch=True)
    base = Path(tempfile.mkdtemp())   # not below pytest's own root, which is closed (0700)
    try:
        base.chmod(0o711)
        closed, inner = base / "closed", base / "closed" / "open" / "data"
        inner.mkdir(parents=True)
        for directory in (closed / "open", inner):   # whatever umask an earlier test of this process left
            directory.chmod(0o755)
        closed.chmod(0o700)
        assert blocked_ancestor(inner, user) == closed
        closed.chmod(0o711)
        assert blocked_ancestor(inner, user) is None
        closed.chmod(0o700)
        assert blocked_ancestor(inner, InstanceUser("me", os.geteuid(), os.getegid(), "/", switch=False)) is None
        with pytest.raises(InstanceUserError, match=f"--data-dir {inner / 'new'}: apps run as nobody and cannot "
                                                    f"enter {closed} \\(mode 0700\\)"):
            make_data_dir(inner / "new", user, "--data-dir")
        assert not (inner / "new").exists(), "refused before anything was created"
        make_data_dir(base / "a" / "b", user, "--data-dir")
        assert [(base / p).stat().st_mode & 0o777 for p in ("a", "a/b")] == [0o711, 0o711]
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(not AS_ROOT, reason="only root gives a directory to another user")
def test_an_instance_directory_kept_from_another_user_becomes_the_apps_with_everything_in_it(tmp_path: Path) -> None:
    user = InstanceUser("nobody", NOBODY.pw_uid, NOBODY.pw_gid, NOBODY.pw_dir, switch=True)
    directory = tmp_path / "APP-0"
    (directory / "sub").mkdir(parents=True)
    (directory / "sub" / "state").write_text("kept")
    (directory / "link").symlink_to("/etc/hostname")
    give_directory(directory, user)
    owners = {p.name: p.lstat().st_uid for p in [directory, directory / "sub", directory / "sub" / "state",
                                                 directory / "link"]}
    assert owners == dict.fromkeys(owners, NOBODY.pw_uid)
    assert Path("/etc/hostname").stat().st_uid == 0, "a link is changed itself, never what it points to"
    assert directory.stat().st_mode & 0o777 == 0o700
