"""Fixtures for the pq tests (owned by that area)."""
