"""Benchmarks: vmworker against a bare kombu loop (the broker's ceiling) and a Celery worker.

`python -m bench.run` (`make bench`) runs them all; see docs/performance.md.
"""
