"""Fixtures for the clients tests (owned by that area)."""
