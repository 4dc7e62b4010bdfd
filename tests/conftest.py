"""Shared pytest configuration: fixtures live in tests/*_fixtures.py plugins."""
pytest_plugins = ["tests.testbed_fixtures", "tests.chain_fixtures"]
