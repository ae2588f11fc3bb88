"""an adapter version's training record (how it was trained: with retrieved context or not)

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no backfill: versions registered before have no record, and are served with
    # the tenant's policy context as before.
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("training", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_column("training")
