"""series and received instances

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("first_received_at", UTCDateTime(), nullable=False),
        sa.Column("last_received_at", UTCDateTime(), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("checked_instance_count", sa.Integer(), nullable=False),
        sa.Column("checked_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("series_instance_uid", name="uq_series_series_instance_uid"),
    )
    op.create_index("ix_series_study_instance_uid", "series", ["study_instance_uid"])
    op.create_index("ix_series_last_received_at", "series", ["last_received_at"])
    op.create_index("ix_series_status", "series", ["status"])
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_id", sa.Integer(), sa.ForeignKey("series.id", ondelete="CASCADE"), nullable=True),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("sop_instance_uid", name="uq_instances_sop_instance_uid"),
    )
    op.create_index("ix_instances_series_id", "instances", ["series_id"])


def downgrade() -> None:
    op.drop_index("ix_instances_series_id", table_name="instances")
    op.drop_table("instances")
    op.drop_index("ix_series_status", table_name="series")
    op.drop_index("ix_series_last_received_at", table_name="series")
    op.drop_index("ix_series_study_instance_uid", table_name="series")
    op.drop_table("series")
