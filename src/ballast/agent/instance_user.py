"""Which OS user an instance's app runs as, and the directories it must (and must not) reach.

Apps are the users' programs: they must not read the platform's secrets (the
agent's token, the client config, the store). An agent running as root starts
every app as an unprivileged user (`--instance-user`, default `ballast-app`,
created as a system user when missing, `nobody` if that fails); the app owns
only its data directory, reads its unpacked artifact, and reaches nothing else
of the agent's (the agent's data dir is traversable, not listable, and every
file in it is the agent's alone). An agent that is not root cannot switch user:
it runs apps as itself and says so loudly (not for production).

The sidecar stays the agent's user: it holds no secret, and as another user
than the app the app can neither signal nor trace it nor rewrite what it counts.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ballast.errors import BallastError

log = logging.getLogger("ballast.agent")
DEFAULT_INSTANCE_USER = "ballast-app"
FALLBACK_INSTANCE_USER = "nobody"
TRAVERSE_ONLY = 0o711      # a directory on the way to an instance's files: enter, not list


class InstanceUserError(BallastError):
    status = 2


@dataclass(frozen=True)
class InstanceUser:
    name: str
    uid: int
    gid: int
    home: str
    switch: bool          # False: the agent is not root and runs apps as itself

    @classmethod
    def of(cls, entry: pwd.struct_passwd, *, switch: bool) -> "InstanceUser":
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, switch)


def ensure_system_user(name: str) -> str:
    """The name of a user apps can run as: `name`, created as a system user if missing, else `nobody`. Root only."""
    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        pass
    try:
        done = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                              capture_output=True, text=True, timeout=30, check=False)
        why = done.stderr.strip() or f"exit code {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        why = str(exc)
    try:
        pwd.getpwnam(name)   # made now, by us or by an agent that raced us
        return name
    except KeyError:
        log.warning("cannot create the user %s for apps (%s); apps run as %s", name, why, FALLBACK_INSTANCE_USER)
        return FALLBACK_INSTANCE_USER


def resolve(requested: str | None, euid: int) -> InstanceUser:
    """The user apps run as, for an agent running with `euid` that was asked for `requested` (None: default)."""
    if euid != 0:
        try:
            me = InstanceUser.of(pwd.getpwuid(euid), switch=False)
        except KeyError:   # a uid without a passwd entry (containers)
            me = InstanceUser(str(euid), euid, os.getegid(), os.environ.get("HOME", "/"), switch=False)
        if requested is not None and requested != me.name:
            raise InstanceUserError(f"--instance-user {requested!r}: the agent runs as {me.name!r}, not root, and "
                                    "cannot start apps as another user; run it as root or drop the option")
        return me
    name = requested if requested is not None else ensure_system_user(DEFAULT_INSTANCE_USER)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise InstanceUserError(f"--instance-user {name!r}: no such user on this host; expected an existing "
                                "unprivileged user") from None
    if entry.pw_uid == 0:
        raise InstanceUserError(f"--instance-user {name!r}: uid 0 would give apps the agent's secrets; "
                                "expected an unprivileged user")
    return InstanceUser.of(entry, switch=True)


def blocked_ancestor(path: Path, user: InstanceUser) -> Path | None:
    """The first existing directory above `path` the user cannot enter, if any (it could not reach its files)."""
    if not user.switch:
        return None
    for directory in reversed(path.absolute().parents):
        try:
            st = directory.stat()
        except FileNotFoundError:
            return None   # from here down, `make_data_dir` creates them enterable
        except OSError:
            return directory
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def make_data_dir(path: Path, user: InstanceUser, option: str) -> None:
    """Create the agent's data dir where the apps' user can reach its files, or refuse before creating anything."""
    blocked = blocked_ancestor(path, user)
    if blocked is not None:
        raise InstanceUserError(f"{option} {path}: apps run as {user.name} and cannot enter {blocked} (mode "
                                f"{stat.S_IMODE(blocked.stat().st_mode):04o}) to reach their files; expected every "
                                f"directory above it to be enterable (chmod o+x {blocked}) or a {option} elsewhere")
    create_enterable(path, user)


def create_enterable(path: Path, user: InstanceUser) -> None:
    """Create `path` and what is missing above it, each directory enterable by the apps' user (if it switches)."""
    missing = [d for d in (path, *path.absolute().parents) if not d.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        open_the_way(directory, user)


def open_the_way(directory: Path, user: InstanceUser) -> None:
    """Make `directory` (the agent's) enterable by the app's user, not listable; owner-only when nobody switches."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, TRAVERSE_ONLY if user.switch else 0o700)


def give_directory(directory: Path, user: InstanceUser) -> None:
    """The instance's own data directory: its user's alone."""
    directory.mkdir(parents=True, exist_ok=True)
    if user.switch and directory.stat().st_uid != user.uid:
        # New, or kept from when apps ran as another user (an ordinal's data survives upgrades): all of it
        # becomes the app's. Links are changed themselves, never followed.
        for root, dirs, files in os.walk(directory):
            for name in (*dirs, *files):
                os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)
        os.chown(directory, user.uid, user.gid)
    os.chmod(directory, 0o700)
