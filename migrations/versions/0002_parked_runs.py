"""parked runs (wake_at, parked) and body-node paths of any length in events

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("parked", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch.add_column(sa.Column("wake_at", sa.Float(), nullable=True))
    op.create_index(
        "ix_runs_wake",
        "runs",
        ["wake_at"],
        postgresql_where=sa.text("parked"),
        sqlite_where=sa.text("parked"),
    )
    with op.batch_alter_table("events") as batch:
        batch.alter_column(
            "node_id", existing_type=sa.String(length=400), type_=sa.Text(), existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.alter_column(
            "node_id", existing_type=sa.Text(), type_=sa.String(length=400), existing_nullable=True
        )
    op.drop_index("ix_runs_wake", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("wake_at")
        batch.drop_column("parked")
