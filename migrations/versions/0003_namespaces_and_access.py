"""namespaces on workflows and runs; API keys, secrets and the audit log

Existing rows go to namespace ``default``. A workflow id and an idempotency key are
unique within their namespace.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("workflow_versions") as batch:
        batch.add_column(
            sa.Column("namespace", sa.String(length=64), server_default="default", nullable=False)
        )
        batch.drop_constraint("pk_workflow_versions", type_="primary")
        batch.create_primary_key("pk_workflow_versions", ["namespace", "workflow_id", "version"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("namespace", sa.String(length=64), server_default="default", nullable=False)
        )
        batch.drop_constraint("uq_runs_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_runs_namespace_key", ["namespace", "idempotency_key"])
        batch.drop_index("ix_runs_workflow")
        batch.create_index("ix_runs_workflow", ["namespace", "workflow_id", "created_at"])
        batch.create_index("ix_runs_namespace", ["namespace", "created_at"])
        batch.create_index("ix_runs_queue", ["status", "namespace", "created_at"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index("ix_api_keys_namespace", "api_keys", ["namespace", "created_at"])
    op.create_table(
        "secrets",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "name", name=op.f("pk_secrets")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=True),
        sa.Column("source", sa.String(length=100), nullable=True),
        sa.Column("detail", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_namespace", "audit_log", ["namespace", "id"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_namespace", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("secrets")
    op.drop_index("ix_api_keys_namespace", table_name="api_keys")
    op.drop_table("api_keys")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_queue")
        batch.drop_index("ix_runs_namespace")
        batch.drop_index("ix_runs_workflow")
        batch.create_index("ix_runs_workflow", ["workflow_id", "created_at"])
        batch.drop_constraint("uq_runs_namespace_key", type_="unique")
        batch.create_unique_constraint("uq_runs_idempotency_key", ["idempotency_key"])
        batch.drop_column("namespace")
    with op.batch_alter_table("workflow_versions") as batch:
        batch.drop_constraint("pk_workflow_versions", type_="primary")
        batch.create_primary_key("pk_workflow_versions", ["workflow_id", "version"])
        batch.drop_column("namespace")
