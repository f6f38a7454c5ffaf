"""Benchmarks: one module per measurement, run with `.venv/bin/python -m bench.<name>`."""
