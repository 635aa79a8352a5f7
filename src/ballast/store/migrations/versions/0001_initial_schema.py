"""initial schema

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('apps',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('latest_revision', sa.Integer(), nullable=False),
    sa.Column('deployed_revision', sa.Integer(), nullable=False),
    sa.Column('status', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('artifacts',
    sa.Column('digest', sa.String(length=80), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('digest')
    )
    op.create_table('audit',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('ts', sa.String(length=40), nullable=False),
    sa.Column('actor', sa.String(length=63), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=255), nullable=False),
    sa.Column('before', sa.String(length=80), nullable=False),
    sa.Column('after', sa.String(length=80), nullable=False),
    sa.Column('result', sa.String(length=255), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('cells',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('zone', sa.String(length=63), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('counters',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('instances',
    sa.Column('id', sa.String(length=80), nullable=False),
    sa.Column('app', sa.String(length=63), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('node', sa.String(length=63), nullable=False),
    sa.Column('cell', sa.String(length=63), nullable=False),
    sa.Column('zone', sa.String(length=63), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('port', sa.Integer(), nullable=True),
    sa.Column('desired', sa.String(length=16), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('ready', sa.Boolean(), nullable=False),
    sa.Column('restarts', sa.Integer(), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('created_seq', sa.BigInteger(), nullable=False),
    sa.Column('desired_version', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index('ix_instances_app', ['app'], unique=False)
        batch_op.create_index('ix_instances_node', ['node'], unique=False)

    op.create_table('nodes',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('cell', sa.String(length=63), nullable=False),
    sa.Column('zone', sa.String(length=63), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('cpu_millis', sa.BigInteger(), nullable=False),
    sa.Column('memory_bytes', sa.BigInteger(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('agent_version', sa.String(length=64), nullable=False),
    sa.Column('registered_at', sa.Float(), nullable=False),
    sa.Column('last_heartbeat', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('revisions',
    sa.Column('app', sa.String(length=63), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=80), nullable=False),
    sa.Column('template', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('app', 'number'),
    sa.UniqueConstraint('app', 'hash', name='uq_revisions_app_hash')
    )
    op.create_table('role_bindings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user', sa.String(length=63), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('apps', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('role_bindings', schema=None) as batch_op:
        batch_op.create_index('ix_role_bindings_user', ['user'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('user', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hash')
    )
    op.create_table('users',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('users')
    op.drop_table('tokens')
    with op.batch_alter_table('role_bindings', schema=None) as batch_op:
        batch_op.drop_index('ix_role_bindings_user')

    op.drop_table('role_bindings')
    op.drop_table('revisions')
    op.drop_table('nodes')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index('ix_instances_node')
        batch_op.drop_index('ix_instances_app')

    op.drop_table('instances')
    op.drop_table('counters')
    op.drop_table('cells')
    op.drop_table('audit_head')
    op.drop_table('audit')
    op.drop_table('artifacts')
    op.drop_table('apps')
