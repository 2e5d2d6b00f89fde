"""durable conversation memory: conversations, their messages and their entities

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("max_messages", sa.Integer(), nullable=False),
        sa.Column("summarize_after", sa.Integer(), nullable=True),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("namespace", "id", name=op.f("pk_conversations")),
    )
    op.create_table(
        "conversation_messages",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("content", JSON, nullable=False),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "namespace", "conversation_id", "seq", name=op.f("pk_conversation_messages")
        ),
    )
    op.create_table(
        "conversation_entities",
        sa.Column("namespace", sa.String(length=64), nullable=False),
        sa.Column("conversation_id", sa.String(length=200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("facts", JSON, nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "namespace", "conversation_id", "name", name=op.f("pk_conversation_entities")
        ),
    )


def downgrade() -> None:
    op.drop_table("conversation_entities")
    op.drop_table("conversation_messages")
    op.drop_table("conversations")
