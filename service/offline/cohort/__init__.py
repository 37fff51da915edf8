"""Cohorts and site-model training, evaluation and reports (issue 7)."""
