"""A removed node or gateway speaks no more: its own credentials are revoked with it."""

from __future__ import annotations

from sqlalchemy import select, update

from ballast.core.digests import digest
from ballast.core.identity import principal_name
from ballast.services.joining import credentials_state
from ballast.store.engine import ACCESS, Tx
from ballast.store.schema import tokens


async def revoke(tx: Tx, kind: str, name: str, actor: str) -> list[str]:
    """Revoke every live credential of component `kind`/`name`, on the audit record beside its joins (the same
    digests); running it again needs an admin's join token. Returns the credentials' ids."""
    user = principal_name(kind, name)
    ids = [str(r.id) for r in (await tx.conn.execute(select(tokens.c.id).where(
        tokens.c.user == user, tokens.c.revoked_at.is_(None)))).all()]
    if not ids:
        return []
    before = digest(await credentials_state(tx, user))
    await tx.conn.execute(update(tokens).where(tokens.c.id.in_(ids)).values(revoked_at=tx.now))
    tx.touch(ACCESS)   # no principal cached from them is used again
    await tx.audit(actor=actor, action=f"{kind}.credentials-revoke", resource=f"{kind.capitalize()}/{name}",
                   before=before, after=digest(await credentials_state(tx, user)), detail={"revoked": ids})
    return ids
