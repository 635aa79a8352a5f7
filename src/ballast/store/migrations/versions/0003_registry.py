"""service registry: endpoints, traffic components, drain gate on instances

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('endpoints',
    sa.Column('id', sa.String(length=80), nullable=False),
    sa.Column('service', sa.String(length=63), nullable=False),
    sa.Column('node', sa.String(length=63), nullable=False),
    sa.Column('cell', sa.String(length=63), nullable=False),
    sa.Column('zone', sa.String(length=63), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.Column('since', sa.Float(), nullable=False),
    sa.Column('required', sa.JSON(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.create_index('ix_endpoints_service', ['service'], unique=False)

    op.create_table('components',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('address', sa.String(length=128), nullable=False),
    sa.Column('acked_generation', sa.BigInteger(), nullable=False),
    sa.Column('applied_hash', sa.String(length=64), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('registered_at', sa.Float(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'name')
    )

    # Existing instances were told their intent directly: that is their grant.
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('granted_revision', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('granted_desired', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('mesh_port', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('drain', sa.JSON(), nullable=True))
    op.execute("UPDATE instances SET granted_revision = revision, granted_desired = desired")
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.alter_column('granted_revision', existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column('granted_desired', existing_type=sa.String(length=16), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('drain')
        batch_op.drop_column('mesh_port')
        batch_op.drop_column('granted_desired')
        batch_op.drop_column('granted_revision')
    op.drop_table('components')
    with op.batch_alter_table('endpoints', schema=None) as batch_op:
        batch_op.drop_index('ix_endpoints_service')
    op.drop_table('endpoints')
