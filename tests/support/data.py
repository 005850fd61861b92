"""Fixtures for the data tests (owned by that area)."""
