"""Store small record payloads in the record row

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batch_records") as batch_op:
        batch_op.add_column(sa.Column("payload", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Payloads stored inline exist nowhere else, so a downgrade would lose them.
    raise NotImplementedError(
        "0002 cannot be downgraded: inline payloads would be lost. Restore a backup instead."
    )
