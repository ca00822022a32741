"""Benchmarks against the peers users would pick instead (not part of the test run).

Run with `bash scripts/bench`; see docs/performance.md.
"""
