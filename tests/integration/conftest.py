"""Integration tests run against the real Apache Kafka broker that docker/kafka-local starts."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.kafka_helpers import ROOT


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka() -> str:
    """Bootstrap servers of a running broker, started by the project's own script if need be.

    Starting is idempotent: when CI (or a developer) already started it, this just checks
    that it answers. It is left running for the next test run; `docker/kafka-local stop` ends it.
    """
    bootstrap = os.environ.get("SLUICE_TEST_BOOTSTRAP", "127.0.0.1:9092")
    if "SLUICE_TEST_BOOTSTRAP" not in os.environ:
        subprocess.run([str(ROOT / "docker" / "kafka-local"), "start"], check=True)
    return bootstrap
