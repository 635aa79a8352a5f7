"""Deterministic packaging of a directory: the same files give the same sha256 digest."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import ballast.demo
import ballast.sdk

SKIP = {"__pycache__", ".git", ".ballast", ".venv", ".hypothesis", ".pytest_cache"}


def pack(directory: Path) -> tuple[bytes, str]:
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if any(part in SKIP for part in rel.parts) or path.suffix == ".pyc" or path.is_symlink():
                continue
            if not (path.is_file() or path.is_dir()):
                continue  # sockets, pipes, devices: nothing a package can carry
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if path.is_dir() or info.mode & 0o111 else 0o644
            if path.is_file():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            elif path.is_dir():
                tar.addfile(info)
    blob = io.BytesIO()
    with gzip.GzipFile(fileobj=blob, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    data = blob.getvalue()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def stage_demo(target: Path) -> Path:
    """Lay out the sample artifact in `target`: the demo's files and, beside app.py, ballast/sdk (standard library
    only) under a ballast package of its own, so the demo's `import ballast.sdk` works wherever it runs."""
    for source in (Path(ballast.demo.__file__).parent, Path(ballast.sdk.__file__).parent):
        destination = target if source.name == "demo" else target / "ballast" / "sdk"
        destination.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix in (".py", ".yaml"):
                shutil.copyfile(path, destination / path.name)
    (target / "ballast" / "__init__.py").write_text('"""Only ballast.sdk: what the sample app imports."""\n')
    return target
