"""indeterminate reports (the "not assessable" SR + key image) and their result objects

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from service.db.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "indeterminate_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dedup_key", sa.String(160), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("reasons_json", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("stored_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("dedup_key", name="uq_indeterminate_reports_dedup_key"),
    )
    op.create_index("ix_indeterminate_reports_study_instance_uid", "indeterminate_reports", ["study_instance_uid"])
    with op.batch_alter_table("result_objects") as batch:
        batch.alter_column("job_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("indeterminate_report_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_result_objects_indeterminate_report_id", "indeterminate_reports",
                                 ["indeterminate_report_id"], ["id"], ondelete="CASCADE")
        batch.create_index("ix_result_objects_indeterminate_report_id", ["indeterminate_report_id"])


def downgrade() -> None:
    # The objects of indeterminate reports have no job: they (and their exports) go with the table.
    op.execute("DELETE FROM exports WHERE result_object_id IN "
               "(SELECT id FROM result_objects WHERE indeterminate_report_id IS NOT NULL)")
    op.execute("DELETE FROM result_objects WHERE indeterminate_report_id IS NOT NULL OR job_id IS NULL")
    with op.batch_alter_table("result_objects") as batch:
        batch.drop_index("ix_result_objects_indeterminate_report_id")
        batch.drop_constraint("fk_result_objects_indeterminate_report_id", type_="foreignkey")
        batch.drop_column("indeterminate_report_id")
        batch.alter_column("job_id", existing_type=sa.Integer(), nullable=False)
    op.drop_index("ix_indeterminate_reports_study_instance_uid", table_name="indeterminate_reports")
    op.drop_table("indeterminate_reports")
