"""Shared pytest configuration. Test-bed fixtures live in tests/testbed_fixtures.py."""
pytest_plugins = ["tests.testbed_fixtures"]
