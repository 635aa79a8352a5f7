"""Artifacts: the packages (.tar.gz) instances run, stored under their sha256 digest.

A push is checked before it is stored (`check`: an archive within the server's limits, whose members stay
inside it; see core/archive.py). A push of content already stored changes nothing but is still audited (who
pushed what, and that it was not new); agents fetch the content by digest. Who may fetch one depends on the
apps whose templates run it (`referencing_apps`).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import String, cast, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ballast import archive
from ballast.core.archive import ArchiveLimits
from ballast.store.engine import Tx
from ballast.store.schema import artifacts, instances, revisions


@dataclass(frozen=True)
class ArtifactRecord:
    digest: str
    size: int
    created_at: float


@dataclass(frozen=True)
class Pushed:
    digest: str
    size: int
    created: bool   # False: that content was stored already


def digest_of(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


async def check(content: bytes, limits: ArchiveLimits) -> None:
    """InvalidInput naming the first member (or property of the archive) that breaks the rules. Runs in a
    thread: reading a large archive must not stall the control plane's event loop."""
    await asyncio.to_thread(archive.walk, content, limits)


async def push(tx: Tx, content: bytes, actor: str) -> Pushed:
    digest = digest_of(content)
    exists = (await tx.conn.execute(select(artifacts.c.digest).where(artifacts.c.digest == digest))).first()
    if exists is None:
        await tx.conn.execute(insert(artifacts).values(digest=digest, size=len(content), content=content,
                                                       created_at=tx.now))
    await tx.audit(actor=actor, action="artifact.push", resource=f"Artifact/{digest}",
                   after=digest, detail={"size": len(content), "new": exists is None})
    return Pushed(digest, len(content), exists is None)


async def list_artifacts(conn: AsyncConnection) -> list[ArtifactRecord]:
    """Every stored artifact, oldest first (without its content)."""
    rows = (await conn.execute(select(artifacts.c.digest, artifacts.c.size, artifacts.c.created_at)
                               .order_by(artifacts.c.created_at))).all()
    return [ArtifactRecord(r.digest, r.size, r.created_at) for r in rows]


async def content(conn: AsyncConnection, digest: str) -> bytes | None:
    """The package stored under `digest`, or None."""
    row = (await conn.execute(select(artifacts.c.content).where(artifacts.c.digest == digest))).first()
    return None if row is None else bytes(row.content)


async def assigned_to(conn: AsyncConnection, node: str, digest: str) -> bool:
    """Whether an instance on `node` was granted a revision that runs artifact `digest` (what its agent may fetch)."""
    granted = (await conn.execute(select(instances.c.app, instances.c.granted_revision).where(
        instances.c.node == node).distinct())).all()
    for app, revision in granted:
        row = (await conn.execute(select(revisions.c.template).where(
            revisions.c.app == app, revisions.c.number == revision))).first()
        if row is not None and (row.template or {}).get("artifact") == digest:
            return True
    return False
async def held(conn: AsyncConnection, digests: Iterable[str]) -> set[str]:
    """Those of `digests` the store holds."""
    wanted = sorted(set(digests))
    if not wanted:
        return set()
    return set((await conn.execute(select(artifacts.c.digest).where(artifacts.c.digest.in_(wanted)))).scalars())


async def referencing_apps(conn: AsyncConnection, digest: str) -> tuple[str, ...]:
    """The apps whose template, at any revision, runs the artifact `digest`."""
    # The text match narrows the rows in the database; the template's own field decides.
    rows = (await conn.execute(select(revisions.c.app, revisions.c.template)
                               .where(cast(revisions.c.template, String).contains(digest)))).all()
    return tuple(sorted({r.app for r in rows if isinstance(r.template, dict) and r.template.get("artifact") == digest}))
