"""Fixtures shared by every test module."""

pytest_plugins = ["tests.fake_openai", "tests.redisdb", "tests.pg"]
