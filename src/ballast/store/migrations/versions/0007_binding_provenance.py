"""role_bindings.created_at and granted_by: when a binding was made and by whom

Revision ID: 0007
Revises: 0006

Maker-checker needs both: an approval counts only through a binding made before the order was written and
granted by none of its authors. Bindings made before this migration have no record of either; they get
created_at 0 and granted_by NULL, meaning "made before records were kept": older than any order, granted by
nobody. That is the state of an existing platform on upgrade day (its approvers were set up before any order
that can still be approved was written), and it never lets an order's author vouch for a binding.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('role_bindings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_at', sa.Float(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('granted_by', sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('role_bindings', schema=None) as batch_op:
        batch_op.drop_column('granted_by')
        batch_op.drop_column('created_at')
