"""release orders, approvals, change windows; cordoned nodes

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cordoned', sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table('change_windows',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('orders',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('digest', sa.String(length=80), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('rolling_back', sa.Boolean(), nullable=False),
    sa.Column('emergency', sa.Boolean(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('waiting', sa.Text(), nullable=False),
    sa.Column('author', sa.String(length=63), nullable=False),
    sa.Column('started_by', sa.String(length=63), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('order_items',
    sa.Column('order_name', sa.String(length=63), nullable=False),
    sa.Column('app', sa.String(length=63), nullable=False),
    sa.Column('to_revision', sa.Integer(), nullable=False),
    sa.Column('from_revision', sa.Integer(), nullable=True),
    sa.Column('release_id', sa.Integer(), nullable=True),
    sa.Column('undo_release_id', sa.Integer(), nullable=True),
    sa.Column('unchanged', sa.Boolean(), nullable=False),
    sa.Column('releases', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('order_name', 'app')
    )
    op.create_table('order_approvals',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('order_name', sa.String(length=63), nullable=False),
    sa.Column('user', sa.String(length=63), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('emergency', sa.Boolean(), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('digest', sa.String(length=80), nullable=False),
    sa.Column('voided', sa.Boolean(), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('order_approvals', schema=None) as batch_op:
        batch_op.create_index('ix_order_approvals_order', ['order_name'], unique=False)
    op.create_table('order_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('order_name', sa.String(length=63), nullable=False),
    sa.Column('ts', sa.Float(), nullable=False),
    sa.Column('actor', sa.String(length=63), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.create_index('ix_order_events_order', ['order_name'], unique=False)


def downgrade() -> None:
    for index, table in (('ix_order_events_order', 'order_events'), ('ix_order_approvals_order', 'order_approvals')):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(index)
    for table in ('order_events', 'order_approvals', 'order_items', 'orders', 'change_windows'):
        op.drop_table(table)
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_column('cordoned')
