"""instances: an index in list order (app, cell, id) and one by resource version; tombstones of deleted instances

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (app, cell, id) serves every lookup by app that ix_instances_app did, as its prefix.
    op.create_index('ix_instances_app_cell_id', 'instances', ['app', 'cell', 'id'], unique=False)
    op.drop_index('ix_instances_app', table_name='instances')
    op.create_index('ix_instances_resource_version', 'instances', ['resource_version'], unique=False)
    op.create_table('instance_tombstones',
    sa.Column('resource_version', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('id', sa.String(length=80), nullable=False),
    sa.Column('app', sa.String(length=63), nullable=False),
    sa.Column('cell', sa.String(length=63), nullable=False),
    sa.Column('node', sa.String(length=63), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('ready', sa.Boolean(), nullable=False),
    sa.Column('desired', sa.String(length=16), nullable=False),
    sa.Column('deleted_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('resource_version', 'id')
    )


def downgrade() -> None:
    op.drop_table('instance_tombstones')
    op.drop_index('ix_instances_resource_version', table_name='instances')
    op.create_index('ix_instances_app', 'instances', ['app'], unique=False)
    op.drop_index('ix_instances_app_cell_id', table_name='instances')
