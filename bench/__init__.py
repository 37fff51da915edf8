"""Benchmarks of bmd-node (`make bench` = ``python -m bench.run``): ingest, end-to-end latency, throughput, memory.

Everything generated goes under bench/work/ (gitignored); the figures go to bench/results.json and the table in
docs/PERFORMANCE.md.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
