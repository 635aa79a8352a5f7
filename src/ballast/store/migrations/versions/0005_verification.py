"""request metrics sources and release verifications

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metrics_address', sa.String(length=128), nullable=True))
    with op.batch_alter_table('components', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metrics_address', sa.String(length=128), nullable=True))
    op.create_table('verifications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=False),
    sa.Column('group_index', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('canary_revision', sa.Integer(), nullable=False),
    sa.Column('baseline_revision', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('window_end', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('start_reading', sa.JSON(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('accepted_by', sa.String(length=63), nullable=True),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('verifications', schema=None) as batch_op:
        batch_op.create_index('ix_verifications_release', ['release_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('verifications', schema=None) as batch_op:
        batch_op.drop_index('ix_verifications_release')
    op.drop_table('verifications')
    with op.batch_alter_table('components', schema=None) as batch_op:
        batch_op.drop_column('metrics_address')
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('metrics_address')
