"""Shared fixtures. Real services (Asterisk, Redis) are started by harness plugins; with CI=true a marked
test that cannot get its service fails, it never skips."""

import pytest

# The failover run the Cluster and Sentinel tests share asserts in the harness: pytest's detail there too.
pytest.register_assert_rewrite("tests.harness.failover")

pytest_plugins = [
    "tests.harness.asterisk",
    "tests.harness.redis",
]
