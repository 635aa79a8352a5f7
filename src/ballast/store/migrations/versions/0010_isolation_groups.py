"""isolation_groups: business units; the group of each instance and endpoint

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('isolation_groups',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('app', sa.String(length=63), nullable=False),
    sa.Column('code', sa.String(length=63), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('status', sa.JSON(), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name'),
    sa.UniqueConstraint('app', 'code', name='uq_isolation_groups_app_code')
    )
    with op.batch_alter_table('instances') as batch:
        batch.add_column(sa.Column('group_code', sa.String(length=63), nullable=False, server_default=''))
    with op.batch_alter_table('endpoints') as batch:
        batch.add_column(sa.Column('group_code', sa.String(length=63), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('endpoints') as batch:
        batch.drop_column('group_code')
    with op.batch_alter_table('instances') as batch:
        batch.drop_column('group_code')
    op.drop_table('isolation_groups')
