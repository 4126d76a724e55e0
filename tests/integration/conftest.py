"""Integration tests run against the real Apache Kafka broker that docker/kafka-local starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import warnings
from collections.abc import Iterator

import pytest
from aiokafka.errors import KafkaError

from tests.integration.kafka_helpers import ROOT, delete_topics_of_this_run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """Bootstrap servers of a running broker, started by the project's own script if need be.

    Starting is idempotent: when CI (or a developer) already started it, this just checks
    that it answers. It is left running for the next test run; `docker/kafka-local stop` ends it.
    """
    bootstrap = os.environ.get("SLUICE_TEST_BOOTSTRAP", "127.0.0.1:9092")
    if "SLUICE_TEST_BOOTSTRAP" not in os.environ:
        subprocess.run([str(ROOT / "docker" / "kafka-local"), "start"], check=True)
    yield bootstrap
    # The run's topics go with it (SLUICE_TEST_KEEP_TOPICS=1 keeps them to look at).
    if os.environ.get("SLUICE_TEST_KEEP_TOPICS") == "1":
        return
    try:
        asyncio.run(delete_topics_of_this_run(bootstrap))
    except (KafkaError, OSError, TimeoutError) as exc:
        # The tests' verdict stands: a broker gone by now only leaves the topics behind.
        warnings.warn(f"could not delete this run's topics: {exc!r}", stacklevel=1)
