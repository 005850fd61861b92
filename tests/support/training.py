"""Fixtures for the training tests (owned by that area)."""
