"""A damaged record in a worker's local RocksDB copy of its state costs no event's contribution:
``GET /keys`` answers an error for the damaged key and changes nothing (a healthy key of the same
partition is still served), the partition's next batch stops the worker once, unscored, and the
restarted worker rebuilds the copy from the changelog before scoring the partition again. Every
output, duplicates included, has the features of a backfill from offset zero, before and after a
restore from the changelog alone.
"""

from __future__ import annotations

import asyncio
import http.client
import shutil
import urllib.parse

import orjson
import pytest
from aiokafka.partitioner import murmur2
from rocksdict import Options, Rdict

from tests.integration.kafka_helpers import (
    free_port,
    read_topic,
    running_worker,
    stop_gracefully,
    topics_for,
    unique,
)
from tests.integration.test_state import (
    assert_same_features,
    backfilled,
    by_position,
    keyed_events,
    produce_timed,
    stateful_config,
)

# The setting: every key but one is read back from the database.
ONE_KEY_CACHED = 'store = "rocksdb"\ncache_keys = 1'
PARTITIONS = 2


def get_key(port: int, pipeline: str, key: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", f"/pipelines/{pipeline}/keys/{urllib.parse.quote(key, safe='')}")
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


def partition_of(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


async def read_all(kafka: str, topic: str, count: int) -> dict[tuple[int, int], list[dict]]:
    live = by_position(await read_topic(kafka, topic, expected=count, within_s=120, idle=1))
    while len(live) < count:
        live = by_position(await read_topic(kafka, topic, expected=count, within_s=5))
    return live


# Found by GET first (which answers an error for it and changes nothing), or first by a batch.
@pytest.mark.parametrize("asked_first", [True, False], ids=["get-then-batch", "batch"])
async def test_a_damaged_record_loses_no_events_contribution(kafka, tmp_path, asked_first):
    name = "statedamage"
    topics = topics_for(unique(name))
    app_id = unique(f"{name}-app")
    config = stateful_config(tmp_path, kafka, name, topics, partitions=PARTITIONS, app_id=app_id, store=ONE_KEY_CACHED)
    events = keyed_events(2400, seed=61)
    ready = f"pipeline {name}: ready"
    with running_worker(config, tmp_path / "first.log", ready_text=ready) as first:
        await produce_timed(kafka, topics["input_topic"], events[:800])
        before = await read_all(kafka, topics["output_topic"], 800)
        assert stop_gracefully(first) == 0

    # While the worker is stopped, one record of partition 0's local copy is overwritten.
    database = tmp_path / "state" / f"{app_id}.{name}-state-changelog" / f"{topics['input_topic']}-0"
    db = Rdict(str(database), Options(raw_mode=True))
    try:
        stored = [k[1:] for k, _ in db.items() if k[:1] == b"k"]
        # The healthy key: partition 0's key with the latest event (not idle past its TTL yet).
        key_of = {orjson.loads(value)["id"]: key for key, value, _ in events}
        last_offset: dict[bytes, int] = {}
        for (partition, offset), bodies in before.items():
            if partition == 0:
                key = key_of[bodies[0]["id"]]
                last_offset[key] = max(offset, last_offset.get(key, -1))
        healthy = max((k for k in stored if k in last_offset), key=last_offset.__getitem__)
        damaged = next(k for k in stored if k != healthy)
        assert partition_of(damaged) == partition_of(healthy) == 0
        db[b"k" + damaged] = b"damaged"
    finally:
        db.close()

    port = free_port()
    second_log = tmp_path / "second.log"
    with running_worker(config, second_log, ready_text=ready, web_port=port) as second:
        if asked_first:
            status, body = await asyncio.to_thread(get_key, port, name, damaged)
            assert status == 500, (status, body)
            assert "damaged" in orjson.loads(body)["error"], body  # the reason, not a generic page
            status, body = await asyncio.to_thread(get_key, port, name, healthy)  # nothing was wiped
            assert status == 200, (status, body)
            assert orjson.loads(body)["latest_event"]["offset"] == last_offset[healthy]
        await produce_timed(kafka, topics["input_topic"], events[800:1600])
        # The partition's next batch stops the worker once, before scoring any of it.
        code = await asyncio.to_thread(second.wait, 60)
    assert code != 0
    stopped = second_log.read_text()
    assert "damaged" in stopped and f"{topics['input_topic']}[0]" in stopped, stopped[-3000:]

    third_log = tmp_path / "third.log"
    with running_worker(config, third_log, ready_text=ready) as third:
        live = await read_all(kafka, topics["output_topic"], 1600)
        assert stop_gracefully(third) == 0
    restored = third_log.read_text()
    assert "rebuilding it from the changelog" in restored or "read from offset 0 to" in restored, restored[-3000:]

    # The changelog alone holds the true state: a worker with no local copy at all goes on from it.
    shutil.rmtree(tmp_path / "state")
    with running_worker(config, tmp_path / "fourth.log", ready_text=ready) as fourth:
        await produce_timed(kafka, topics["input_topic"], events[1600:])
        live = await read_all(kafka, topics["output_topic"], 2400)
        assert stop_gracefully(fourth) == 0
    reference = await backfilled(kafka, config, unique(f"{name}-backfill"), 2400)
    assert_same_features(live, reference)
