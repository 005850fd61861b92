"""Fixtures for the build tests (owned by that area)."""
