"""Per-stage logic: plain functions over batches, with thin Prefect wrappers at the bottom."""
