"""Marks shared by the test modules."""

from __future__ import annotations

import pytest

from tests.harness import is_nats_server_command, leafgate_command

# The suite can run against nats-server itself (LEAFGATE_CMD=nats-server) to check
# that the tests describe nats-server's behaviour; tests of what only leafgate has
# (its reload rules, its own endpoints and limits) cannot run then.
leafgate_only = pytest.mark.skipif(
    is_nats_server_command(leafgate_command()),
    reason="tests a leafgate-only feature; LEAFGATE_CMD runs this suite against nats-server",
)
