"""Shared fixtures live in tests/fixtures/, one module per concern."""

pytest_plugins = [
    "tests.fixtures.gcs",
    "tests.fixtures.dists",
    "tests.fixtures.nginx",
    "tests.fixtures.browser",
    "tests.fixtures.proxy",
]
