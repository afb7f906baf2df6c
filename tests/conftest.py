"""Shared fixtures. Real services (Asterisk, Redis) are started by harness plugins; with CI=true a marked
test that cannot get its service fails, it never skips."""

pytest_plugins = [
    "tests.harness.asterisk",
    "tests.harness.redis",
]
