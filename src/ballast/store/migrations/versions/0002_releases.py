"""releases

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('release_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=63), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('release_events', schema=None) as batch_op:
        batch_op.create_index('ix_release_events_release', ['release_id'], unique=False)

    op.create_table('releases',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('app', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('from_revision', sa.Integer(), nullable=False),
    sa.Column('to_revision', sa.Integer(), nullable=False),
    sa.Column('strategy', sa.JSON(), nullable=False),
    sa.Column('plan', sa.JSON(), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('direction', sa.String(length=16), nullable=False),
    sa.Column('completed_groups', sa.Integer(), nullable=False),
    sa.Column('pause_until', sa.Float(), nullable=True),
    sa.Column('fast', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('waiting', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=63), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.create_index('ix_releases_app', ['app'], unique=False)

    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('running_revision', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('replaces', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('ordinal', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('changed_at', sa.Float(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('changed_at')
        batch_op.drop_column('ordinal')
        batch_op.drop_column('replaces')
        batch_op.drop_column('running_revision')

    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.drop_index('ix_releases_app')

    op.drop_table('releases')
    with op.batch_alter_table('release_events', schema=None) as batch_op:
        batch_op.drop_index('ix_release_events_release')

    op.drop_table('release_events')
