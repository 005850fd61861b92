"""Fixtures for the docker tests (owned by that area)."""
