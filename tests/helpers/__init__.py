"""Importable helpers for tests (picklable models, factories)."""
