"""Shared fixtures. Integration services live in tests/integration/conftest.py."""
