"""per-vertebra results and result objects

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vertebra_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("level", sa.String(4), nullable=False),
        sa.Column("level_value", sa.Integer(), nullable=False),
        sa.Column("centroid_x_mm", sa.Float(), nullable=False),
        sa.Column("centroid_y_mm", sa.Float(), nullable=False),
        sa.Column("centroid_z_mm", sa.Float(), nullable=False),
        sa.Column("roi_method", sa.String(32), nullable=False),
        sa.Column("trabecular_hu_mean", sa.Float(), nullable=True),
        sa.Column("trabecular_hu_median", sa.Float(), nullable=True),
        sa.Column("trabecular_hu_sd", sa.Float(), nullable=True),
        sa.Column("voxel_count", sa.Integer(), nullable=False),
        sa.Column("roi_volume_mm3", sa.Float(), nullable=False),
        sa.Column("bmd_mg_cm3", sa.Float(), nullable=True),
        sa.Column("evaluable", sa.Boolean(), nullable=False),
        sa.Column("exclusion_reason", sa.String(32), nullable=True),
        sa.Column("exclusion_detail", sa.Text(), nullable=True),
        sa.Column("level_uncertain", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("job_id", "level", name="uq_vertebra_results_job_level"),
    )
    op.create_index("ix_vertebra_results_job_id", "vertebra_results", ["job_id"])
    op.create_table(
        "result_objects",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("superseded_by_job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=True),
        sa.UniqueConstraint("sop_instance_uid", name="uq_result_objects_sop_instance_uid"),
    )
    op.create_index("ix_result_objects_job_id", "result_objects", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_result_objects_job_id", table_name="result_objects")
    op.drop_table("result_objects")
    op.drop_index("ix_vertebra_results_job_id", table_name="vertebra_results")
    op.drop_table("vertebra_results")
