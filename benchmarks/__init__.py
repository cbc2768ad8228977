"""Benchmarks: `python -m benchmarks.bench` from the repository root, and the scripts beside it."""
