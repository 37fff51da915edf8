"""patient identity and study facts on jobs (BMD trend, issue 20) and the fracture check per level (issue 15)

jobs: patient_id, issuer_of_patient_id, patient_identity_recorded_at (patient data, erased after
``[results] patient_identity_retention_days``), study_date, kvp; index ix_jobs_patient.
vertebra_results: fracture_status, genant_grade, height_loss.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from service.db.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_JOB_COLUMNS = ("patient_id", "issuer_of_patient_id", "patient_identity_recorded_at", "study_date", "kvp")
_VERTEBRA_COLUMNS = ("fracture_status", "genant_grade", "height_loss")


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default): no table rebuild on SQLite, so the jobs' partial unique index stays.
    op.add_column("jobs", sa.Column("patient_id", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("issuer_of_patient_id", sa.String(64), nullable=True))
    op.add_column("jobs", sa.Column("patient_identity_recorded_at", UTCDateTime(), nullable=True))
    op.add_column("jobs", sa.Column("study_date", sa.Date(), nullable=True))
    op.add_column("jobs", sa.Column("kvp", sa.Float(), nullable=True))
    op.create_index("ix_jobs_patient", "jobs", ["patient_id", "issuer_of_patient_id"])
    op.add_column("vertebra_results", sa.Column("fracture_status", sa.String(16), nullable=True))
    op.add_column("vertebra_results", sa.Column("genant_grade", sa.Integer(), nullable=True))
    op.add_column("vertebra_results", sa.Column("height_loss", sa.Float(), nullable=True))


def downgrade() -> None:
    # DROP COLUMN works in place on PostgreSQL and SQLite >= 3.35 (no index or constraint on these columns once
    # ix_jobs_patient is gone).
    for name in _VERTEBRA_COLUMNS:
        op.drop_column("vertebra_results", name)
    op.drop_index("ix_jobs_patient", table_name="jobs")
    for name in _JOB_COLUMNS:
        op.drop_column("jobs", name)
