"""Benchmarks: scripts that measure avatargen and print their figures (`python -m benchmarks.<name>`).

Each script takes `--quick` (tiny durations, so CI can run it and it never rots) and prints a
Markdown table. docs/benchmarks.md holds the figures of a full run.
"""
