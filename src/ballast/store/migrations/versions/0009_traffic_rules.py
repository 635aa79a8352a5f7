"""traffic_rules: TrafficRules and ColoringRules

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('traffic_rules',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('service', sa.String(length=63), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('owner', sa.String(length=100), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('kind', 'name')
    )


def downgrade() -> None:
    op.drop_table('traffic_rules')
