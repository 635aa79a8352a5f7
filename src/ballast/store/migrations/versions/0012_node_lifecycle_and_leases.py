"""node lifecycle (state, its reason, the agent's conditions) and control-plane leases

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('epoch', sa.BigInteger(), nullable=False),
    sa.Column('acquired_at', sa.Float(), nullable=False),
    sa.Column('renewed_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('nodes') as batch:
        batch.add_column(sa.Column('lifecycle', sa.String(length=16), nullable=False, server_default='Ready'))
        batch.add_column(sa.Column('lifecycle_since', sa.Float(), nullable=True))
        batch.add_column(sa.Column('lifecycle_reason', sa.Text(), nullable=False, server_default=''))
        batch.add_column(sa.Column('conditions', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes') as batch:
        batch.drop_column('conditions')
        batch.drop_column('lifecycle_reason')
        batch.drop_column('lifecycle_since')
        batch.drop_column('lifecycle')
    op.drop_table('leases')
