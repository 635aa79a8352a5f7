"""scheduled_tasks, task_runs, task_shards: ScheduledTasks and their runs

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scheduled_tasks',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('service', sa.String(length=63), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('considered_until', sa.Float(), nullable=False),
    sa.Column('status', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('task_runs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=63), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('scheduled_for', sa.Float(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('actor', sa.String(length=63), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('shards', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('task', 'trigger', 'scheduled_for', name='uq_task_runs_task_trigger_time')
    )
    op.create_index('ix_task_runs_task', 'task_runs', ['task'], unique=False)
    op.create_table('task_shards',
    sa.Column('run_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('claims', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_by', sa.String(length=63), nullable=True),
    sa.Column('lease_until', sa.Float(), nullable=True),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.Column('instance', sa.String(length=80), nullable=True),
    sa.Column('group_code', sa.String(length=63), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('claimed_at', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('run_id', 'index')
    )
    op.create_index('ix_task_shards_state', 'task_shards', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_task_shards_state', table_name='task_shards')
    op.drop_table('task_shards')
    op.drop_index('ix_task_runs_task', table_name='task_runs')
    op.drop_table('task_runs')
    op.drop_table('scheduled_tasks')
