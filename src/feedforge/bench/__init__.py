"""Benchmarks: scripts that measure quality and speed and write tables to docs/benchmarks.

They are commands (``feedforge bench ...``), never timed tests.
"""
