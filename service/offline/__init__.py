"""Offline tools: phantom generator, training recipes, evaluation, cohorts and site-model reports, demo.

Nothing the node runs imports this package (an import-linter contract in ``make test``)."""
