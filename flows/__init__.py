"""Prefect flows: one job per file, orchestration only (paths in, paths out)."""
