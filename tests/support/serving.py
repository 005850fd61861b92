"""Fixtures for the serving tests (owned by that area)."""
