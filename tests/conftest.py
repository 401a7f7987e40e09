"""Shared pytest fixtures live in the per-package conftest files under tests/<package>/."""
