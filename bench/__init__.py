"""Benchmarks of every stage, the plain single-process baseline, and the BENCHMARKS.md report."""
