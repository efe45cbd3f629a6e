"""Fixtures shared by every test folder. Service fixtures live in tests/fixtures/, one module each."""

pytest_plugins = [
    "tests.fixtures.proxy",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.gateway",
]
