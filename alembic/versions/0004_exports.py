"""exports (outbox of result objects to peers)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("result_object_id", sa.Integer(), sa.ForeignKey("result_objects.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("peer_name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("warning", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("result_object_id", "peer_name", name="uq_exports_object_peer"),
    )
    op.create_index("ix_exports_result_object_id", "exports", ["result_object_id"])
    op.create_index("ix_exports_status_next", "exports", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_exports_status_next", table_name="exports")
    op.drop_index("ix_exports_result_object_id", table_name="exports")
    op.drop_table("exports")
