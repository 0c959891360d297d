"""Benchmarks of the credential hot path against raw asyncpg and SQLAlchemy.

Run with ``make bench`` (``python -m benchmarks.run --help`` for the
options); never part of the unit suite. The latest figures, with the
issue's targets, are in ``benchmarks/results/results.md``.
"""
