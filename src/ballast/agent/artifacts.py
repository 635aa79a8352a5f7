"""Fetch content-addressed packages from the control plane and unpack them once per digest.

Unpacking is bounded (`core.archive`: members, unpacked bytes, paths inside the package) whatever the
control plane accepted, and runs in a thread: an archive bomb costs the agent a refusal on the instance that
wanted it, never its event loop (which serves every other instance) nor more disk than the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

from ballast import archive
from ballast.client import Client
from ballast.core.archive import ArchiveLimits
from ballast.errors import BallastError


NODE_LIMITS = ArchiveLimits.for_unpacking(ArchiveLimits.max_files, ArchiveLimits.max_unpacked_bytes)


class ArtifactError(BallastError):
    status = 502


class ArtifactCache:
    def __init__(self, client: Client, root: Path, limits: ArchiveLimits = NODE_LIMITS) -> None:
        self.client = client
        self.root = root
        self.limits = limits
        self._locks: dict[str, asyncio.Lock] = {}

    async def path_for(self, digest: str) -> Path:
        target = self.root / digest.replace(":", "-")
        async with self._locks.setdefault(digest, asyncio.Lock()):
            if target.is_dir():
                return target
            blob = await self.client.request("GET", f"/v1/artifacts/{digest}", timeout=120)
            actual = "sha256:" + hashlib.sha256(blob).hexdigest()
            if actual != digest:
                raise ArtifactError(f"artifact {digest} arrived with digest {actual}; refusing to run it")
            staging = target.with_name(target.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            try:
                await asyncio.to_thread(archive.walk, blob, self.limits, staging)
            except BallastError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise ArtifactError(f"artifact {digest} cannot be unpacked: {exc.message}") from exc
            _readable_not_writable(staging)
            staging.rename(target)  # atomic: a half-unpacked package is never used
            return target


def _readable_not_writable(root: Path) -> None:
    """An unpacked artifact is the agent's: apps of any user may read and run it, none may change it."""
    for directory, _, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)


def working_dir(root: Path, relative: str | None) -> Path:
    """`workingDir` inside the unpacked package `root`; ArtifactError if it leads outside (the control plane
    refuses such a template, this keeps a stored one from older days from escaping too)."""
    if not relative:
        return root
    resolved = (root / relative).resolve()
    if resolved != root.resolve() and root.resolve() not in resolved.parents:
        raise ArtifactError(f"workingDir {relative!r} leads outside the artifact; expected a directory inside it")
    return resolved
