"""join_tokens, components.acked_by, and the end of the shared `agent` role

Revision ID: 0008
Revises: 0007

Every node and gateway now has its own credential, got by exchanging a one-time join token. The `agent` role
(one credential speaking for every node) is gone: its bindings are deleted and the tokens of users who held it
are revoked, so an upgraded platform's agents must join (`ballast node join`); nothing keeps speaking for
every node by accident.
"""
import time

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('join_tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=True),
    sa.Column('name', sa.String(length=63), nullable=True),
    sa.Column('created_by', sa.String(length=63), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=True),
    sa.Column('used_for', sa.String(length=63), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hash')
    )
    with op.batch_alter_table('components', schema=None) as batch_op:
        batch_op.add_column(sa.Column('acked_by', sa.String(length=32), nullable=True))
    conn = op.get_bind()
    conn.execute(sa.text("UPDATE tokens SET revoked_at = :now WHERE revoked_at IS NULL AND \"user\" IN "
                         "(SELECT \"user\" FROM role_bindings WHERE role = 'agent')"),
                 {"now": time.time()})
    conn.execute(sa.text("DELETE FROM role_bindings WHERE role = 'agent'"))


def downgrade() -> None:
    with op.batch_alter_table('components', schema=None) as batch_op:
        batch_op.drop_column('acked_by')
    op.drop_table('join_tokens')
