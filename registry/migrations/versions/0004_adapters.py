"""adapters: a version's training method ("full" or "lora") and, for a LoRA adapter, its settings and base

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 12:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('method', sa.String(length=16), nullable=False, server_default='full'))
        batch_op.add_column(sa.Column('adapter', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('adapter')
        batch_op.drop_column('method')
