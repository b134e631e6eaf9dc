"""sharing: job kinds (train, import, push, evaluate) with their result and a secret wiped at the end, the
promotion decision, version lineage and soft deletion

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 07:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), nullable=False, server_default='train'))
        batch_op.add_column(sa.Column('result', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('secret', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('promotion', sa.JSON(), nullable=True))
        batch_op.create_index('ix_jobs_model_kind', ['model_name', 'model_version', 'kind'], unique=False)
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lineage', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_column('deleted_at')
        batch_op.drop_column('lineage')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_model_kind')
        batch_op.drop_column('promotion')
        batch_op.drop_column('secret')
        batch_op.drop_column('result')
        batch_op.drop_column('kind')
