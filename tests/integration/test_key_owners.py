"""``GET /pipelines/NAME/keys/KEY`` against a rogue group member: a plain aiokafka consumer that
joins the pipeline's consumer group naming someone else's web address in its client id gets
partitions, but a worker never redirects requests for their keys to that address.

The broker sees the rogue connect from 127.0.0.1; it advertises ``evil.example:80``, which does
not resolve to 127.0.0.1 (``.example`` is reserved: it resolves to nothing here).
"""

from __future__ import annotations

import asyncio
import http.client
import time
import urllib.parse

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2

from app.config import load_config
from tests.integration.kafka_helpers import free_port, running_worker, topics_for, unique
from tests.integration.test_state import stateful_config

PARTITIONS = 4


def key_in(partition: int) -> str:
    """A key the default partitioner puts in ``partition`` (murmur2, as the worker computes)."""
    return next(
        k for k in (f"acct-{i}" for i in range(10_000)) if (murmur2(k.encode()) & 0x7FFFFFFF) % PARTITIONS == partition
    )


def get(port: int, path: str) -> tuple[int, dict, str | None]:
    """GET without following a redirect: (status, JSON body, Location)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, orjson.loads(reply.read()), reply.getheader("Location")
    finally:
        connection.close()


async def test_a_rogue_group_member_cannot_redirect_key_requests(kafka, tmp_path):
    name = "rogueowner"
    topics = topics_for(unique(name))
    config = stateful_config(tmp_path, kafka, name, topics, partitions=PARTITIONS)
    group = load_config(config, environ={}).pipeline(name).group_id
    port = free_port()
    log_path = tmp_path / "worker.log"
    with running_worker(config, log_path, ready_text=f"pipeline {name}: ready", web_port=port) as worker:
        rogue = AIOKafkaConsumer(
            topics["input_topic"],
            bootstrap_servers=kafka,
            group_id=group,
            client_id=f"sluice-{name}@evil.example:80",
            enable_auto_commit=False,
        )
        await rogue.start()
        try:
            # A known state: the rogue holds partitions, and the worker holds the rest (its own
            # assignment reflects the rebalance).
            deadline = time.monotonic() + 90
            while True:
                await rogue.getmany(timeout_ms=200)
                held = {tp.partition for tp in rogue.assignment()}
                _, ready, _ = await asyncio.to_thread(get, port, "/ready")
                if held and ready["pipelines"][name]["partitions"] == PARTITIONS - len(held):
                    break
                assert time.monotonic() < deadline and worker.poll() is None, (held, ready)
            mine = sorted(set(range(PARTITIONS)) - held)
            assert mine, "the worker keeps some partitions (round robin between two members)"

            answers = []
            deadline = time.monotonic() + 60
            for partition in sorted(held):
                path = f"/pipelines/{name}/keys/{urllib.parse.quote(key_in(partition), safe='')}"
                while True:
                    await rogue.getmany(timeout_ms=100)  # stays a member, with its partitions
                    status, body, location = await asyncio.to_thread(get, port, path)
                    answers.append((status, body, location))
                    # Never a redirect for the rogue's partitions: while the group settles the
                    # answer is "moving" (503), then "not verified" (503), never a Location.
                    assert status == 503 and location is None and "owner" not in body, answers
                    if "could not be verified" in body["error"]:
                        break
                    assert time.monotonic() < deadline, answers
                assert body["partition"] == partition
            assert {tp.partition for tp in rogue.assignment()} == held, "the group did not move meanwhile"

            # After the owners' cache expires (2 s), asked again: still no redirect, and the
            # rogue is in the log once, not once per lookup.
            await asyncio.sleep(2.5)
            await rogue.getmany(timeout_ms=100)
            status, body, location = await asyncio.to_thread(get, port, path)
            assert (status, location) == (503, None) and "could not be verified" in body["error"], body

            # Keys of the worker's own partitions are answered by it (no state yet: 404).
            status, body, location = await asyncio.to_thread(get, port, f"/pipelines/{name}/keys/{key_in(mine[0])}")
            assert (status, location) == (404, None), body
        finally:
            await rogue.stop()
    logged = log_path.read_text()
    warnings = [line for line in logged.splitlines() if "evil.example:80" in line]
    assert len(warnings) == 1, warnings
    assert "127.0.0.1" in warnings[0] and "WARNING" in warnings[0], warnings
