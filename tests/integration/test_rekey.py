"""A pipeline keyed by an event field (``state.key_field``), on the real broker: events produced
with no key (spread over the partitions at random) are re-keyed through the repartition topic,
and each account's features come from that account's events alone, live and replayed alike."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import numpy as np
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.kafka_helpers import (
    free_port,
    read_topic,
    running_worker,
    stop_gracefully,
    topics_for,
    unique,
    wait_for_log,
)
from tests.integration.test_state import (
    assert_same_features,
    backfilled,
    by_position,
    get_key,
    keyed_events,
    produce_timed,
    stateful_config,
)

# Which events the hostile inputs below are, and why each is a dead letter.
BAD = {
    b'{"id": "no-acct", "features": []}': "MissingKey",
    b'{"id": "bool-acct", "acct": true}': "WrongType",
    b'{"id": "float-acct", "acct": 1.5}': "WrongType",
    b'{"id": "long-acct", "acct": "' + b"x" * 2000 + b'"}': "KeyTooLong",
    b"[1, 2]": "NotAnObject",
    b"{not json": "InvalidJSON",
}


def unkeyed_events(count: int, seed: int) -> list[tuple[None, bytes, int]]:
    """The state tests' events with their key moved into an ``acct`` field, produced without a key."""
    out = []
    for key, value, ts in keyed_events(count, seed):
        event = orjson.loads(value)
        event["acct"] = key.decode() if seed % 2 else int(key.decode().split("-")[1])  # strings, or integers
        out.append((None, orjson.dumps(event), ts))
    return out


def rekeyed_config(tmp_path, kafka, name, topics, *, app_id, settings=""):
    return stateful_config(tmp_path, kafka, name, topics, app_id=app_id, store='key_field = "acct"', settings=settings)


def assert_keyed_by_field(repartitioned, outputs) -> None:
    """Each re-keyed event is keyed by its field, all of a key's in one partition, and each
    prediction's history holds its own key's previous event (whatever partition it came from)."""
    previous: dict[bytes, float] = {}
    expected_previous: dict[str, float | None] = {}
    partition_of: dict[bytes, int] = {}
    for record in repartitioned:
        event = orjson.loads(record.value)
        assert record.key == str(event["acct"]).encode()
        assert partition_of.setdefault(record.key, record.partition) == record.partition
        expected_previous[event["id"]] = previous.get(record.key)
        previous[record.key] = event["amount"]
    checked = 0
    for body in outputs:
        rows = [row for row in body["features"]["recent"] if row[-1] == 1]  # amount, foreign, mask
        if len(rows) >= 2:
            assert rows[-2][0] == float(np.float32(expected_previous[body["id"]])), body
            checked += 1
    assert checked > 1000


async def test_events_without_keys_are_rekeyed_by_a_field_and_live_equals_backfill(kafka, tmp_path):
    name = "rekeyed"
    topics = topics_for(unique(name))
    app_id = unique(f"{name}-app")
    config = rekeyed_config(tmp_path, kafka, name, topics, app_id=app_id)
    events = unkeyed_events(3000, seed=43)
    bad = [(None, value, ts) for value, (_, _, ts) in zip(BAD, events, strict=False)]
    # Valid, but stamped two hours ahead: the input topic takes it (it takes a day ahead), the
    # repartition topic someone created beforehand does not (Kafka 4's default: an hour), which
    # inside a re-keying transaction would fail it again after every restart.
    future = b'{"id": "future", "acct": "acct-01"}'
    bad.append((None, future, int(time.time() * 1000) + 2 * 3_600_000))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        day_ahead = {"message.timestamp.after.max.ms": str(24 * 3_600_000)}
        await admin.create_topics(
            [
                NewTopic(topics["input_topic"], 3, 1, topic_configs=day_ahead),
                NewTopic(f"{app_id}.{name}-repartition", 3, 1),
            ]
        )
    finally:
        await admin.close()
    port = free_port()
    with running_worker(config, tmp_path / "worker.log", ready_text=f"pipeline {name}: ready", web_port=port) as worker:
        await produce_timed(kafka, topics["input_topic"], events[:1000] + bad)
        await produce_timed(kafka, topics["input_topic"], events[1000:], rate=1500)
        live = by_position(await read_topic(kafka, topics["output_topic"], expected=3000, within_s=120, idle=1))
        letters = await read_topic(kafka, topics["dead_letter_topic"], expected=len(bad), within_s=30)
        # Served by the field's value: the key of the last event produced, whose state cannot have expired.
        key = str(orjson.loads(events[-1][1])["acct"]).encode()
        status, served, _ = await asyncio.to_thread(get_key, port, name, key.decode())
        assert stop_gracefully(worker) == 0
    repartition = f"{app_id}.{name}-repartition"
    repartitioned = await read_topic(kafka, repartition, expected=3000, within_s=30, idle=1)
    assert len(repartitioned) == 3000
    # Its last prediction is that of its last event re-keyed, which need not be the last produced:
    # events produced without a key land in any input partition, and partitions are re-keyed side by side.
    last_id = orjson.loads([r for r in repartitioned if r.key == key][-1].value)["id"]
    assert status == 200, served
    output = [b for bs in live.values() for b in bs if b["id"] == last_id][-1]
    assert served["last_prediction"]["prediction"] == output["prediction"]
    assert served["last_prediction"]["source"] == output["source"]
    bodies = [b for bs in live.values() for b in bs]
    assert Counter(b["id"] for b in bodies).keys() == {orjson.loads(v)["id"] for _, v, _ in events}
    assert_keyed_by_field(repartitioned, bodies)
    # Dead letters at the re-keying stage name the event's original position and why.
    reasons = {orjson.loads(r.value)["value"].encode(): orjson.loads(r.value)["error"] for r in letters}
    assert reasons == BAD | {future: "TimestampOutOfRange"}
    assert {orjson.loads(r.value)["source"]["topic"] for r in letters} == {topics["input_topic"]}
    # The backfill replays the repartition topic: the same features, position by position.
    assert_same_features(live, await backfilled(kafka, config, unique("rekeyed-backfill"), 3000))


async def test_a_worker_killed_inside_a_rekeying_transaction_rekeys_each_event_exactly_once(kafka, tmp_path):
    name = "rekeykill"
    topics = topics_for(unique(name))
    app_id = unique(f"{name}-app")
    config = rekeyed_config(tmp_path, kafka, name, topics, app_id=app_id, settings='delivery = "exactly_once"')
    events = unkeyed_events(3000, seed=44)
    # Known point: three re-keying transactions committed, the next one's records acknowledged
    # (in the log, uncommitted), then the process kills itself.
    hook = {"SLUICE_TEST_KILL_IN_REKEY_TRANSACTION_AFTER_COMMITS": "3"}
    with running_worker(config, tmp_path / "first.log", ready_text=f"pipeline {name}: ready", env=hook) as first:
        producing = asyncio.ensure_future(produce_timed(kafka, topics["input_topic"], events, rate=1000))
        assert await asyncio.to_thread(first.wait, 120) == -signal.SIGKILL
    with running_worker(config, tmp_path / "second.log", ready_text=f"pipeline {name}: ready") as second:
        await producing
        live = by_position(
            await read_topic(
                kafka, topics["output_topic"], expected=3000, within_s=120, idle=1, isolation_level="read_committed"
            )
        )
        assert stop_gracefully(second) == 0
    repartition = f"{app_id}.{name}-repartition"
    everything = await read_topic(kafka, repartition, expected=10**9, within_s=3)
    committed = await read_topic(
        kafka, repartition, expected=3000, within_s=30, idle=1, isolation_level="read_committed"
    )
    assert len(everything) > len(committed), "the killed worker's re-keyed records were in an open transaction"
    assert Counter(orjson.loads(r.value)["id"] for r in committed) == Counter(
        orjson.loads(v)["id"] for _, v, _ in events
    )
    bodies = [b for bs in live.values() for b in bs]
    assert len(bodies) == 3000
    assert_keyed_by_field(committed, bodies)
    assert_same_features(live, await backfilled(kafka, config, unique("rekeykill-backfill"), 3000))


async def test_a_rebalance_to_a_second_worker_and_back_rekeys_each_event_once(kafka, tmp_path):
    name = "rekeyreb"
    topics = topics_for(unique(name))
    app_id = unique(f"{name}-app")
    config = rekeyed_config(tmp_path, kafka, name, topics, app_id=app_id)
    events = unkeyed_events(4000, seed=45)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with running_worker(config, first_log, ready_text=f"pipeline {name}: ready") as first:
        await produce_timed(kafka, topics["input_topic"], events[:1000])
        await read_topic(kafka, topics["output_topic"], expected=1000, within_s=60)
        producing = asyncio.ensure_future(produce_timed(kafka, topics["input_topic"], events[1000:3000], rate=400))
        with running_worker(config, second_log, ready_text=f"pipeline {name}: ready") as second:
            # The stage's own partitions (of the input topic) move, not only the pipeline's.
            wait_for_log(first_log, f"partitions revoked: {topics['input_topic']}[", proc=first)
            await producing
            await read_topic(kafka, topics["output_topic"], expected=3000, within_s=60)
            assert stop_gracefully(second) == 0
        await produce_timed(kafka, topics["input_topic"], events[3000:], rate=1000)
        live = by_position(await read_topic(kafka, topics["output_topic"], expected=4000, within_s=120, idle=1))
        assert first.poll() is None
    assert f"transactions open for {topics['input_topic']}[" in second_log.read_text(), "the second re-keyed some"
    repartition = f"{app_id}.{name}-repartition"
    committed = await read_topic(
        kafka, repartition, expected=4000, within_s=30, idle=1, isolation_level="read_committed"
    )
    assert Counter(orjson.loads(r.value)["id"] for r in committed) == Counter(
        orjson.loads(v)["id"] for _, v, _ in events
    )
    bodies = [b for bs in live.values() for b in bs]
    assert {b["id"] for b in bodies} == {orjson.loads(v)["id"] for _, v, _ in events}
    assert_keyed_by_field(committed, bodies)
    assert_same_features(live, await backfilled(kafka, config, unique("rekeyreb-backfill"), 4000))
