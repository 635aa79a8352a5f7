"""releases.strategy in the public spelling (betaSize, groupSizes, ...), as users write spec.strategy

Revision ID: 0006
Revises: 0005

A data migration: every release's stored strategy is rewritten in Python, row by row, so the same code serves
SQLite and PostgreSQL. Only the top-level names change; `verify` was already stored in its public spelling.
The names are spelled out here rather than taken from the application, so this migration keeps doing what it
did when the schema code moves on. Audit details that quote a strategy are hash-chained and stay as written.
"""
from typing import Any

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

PUBLIC = {'beta_size': 'betaSize', 'group_sizes': 'groupSizes', 'pause_seconds': 'pauseSeconds',
          'max_unavailable_per_cell': 'maxUnavailablePerCell', 'progress_deadline_seconds': 'progressDeadlineSeconds'}
STORED_BEFORE = {public: old for old, public in PUBLIC.items()}

releases = sa.table('releases', sa.column('id', sa.Integer()), sa.column('strategy', sa.JSON()))


def renamed(strategy: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """`strategy` with the keys in `names` renamed; every other key (groups, pause, upgrade, verify) as it was."""
    return {names.get(key, key): value for key, value in strategy.items()}


def _rewrite(names: dict[str, str]) -> None:
    conn = op.get_bind()
    for row in conn.execute(sa.select(releases.c.id, releases.c.strategy)).all():
        new = renamed(row.strategy, names)
        if new != row.strategy:
            conn.execute(sa.update(releases).where(releases.c.id == row.id).values(strategy=new))


def upgrade() -> None:
    _rewrite(PUBLIC)


def downgrade() -> None:
    _rewrite(STORED_BEFORE)
