"""Fixtures shared by every test module."""

pytest_plugins = ["tests.fake_openai", "tests.pg", "tests.redisdb", "tests.s3server"]
