"""Benchmarks of the whole pipeline: throughput against its limit and the naive way,
latency under Rubin's load with the real Dagster daemon, memory, scaling. Run with
``.venv/bin/python -m bench.pipeline [--quick]``; the report is ``docs/benchmarks.md``."""
