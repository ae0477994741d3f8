"""Benchmarks: each script measures both sides of a comparison in one run."""
