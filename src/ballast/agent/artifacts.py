"""Fetch content-addressed packages from the control plane and unpack them once per digest."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

from ballast.client import Client
from ballast.errors import BallastError


class ArtifactError(BallastError):
    status = 502


class ArtifactCache:
    def __init__(self, client: Client, root: Path) -> None:
        self.client = client
        self.root = root
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
                with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                    tar.extractall(staging, filter="data")
            except (tarfile.TarError, OSError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise ArtifactError(f"artifact {digest} cannot be unpacked: {exc}") from exc
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
