"""Per-key features against the real broker, counted by source position: the live worker's
features and predictions equal a backfill's from offset zero, for every position, also across a
SIGKILL in the middle of writing the state's changelog and a rebalance to a second worker and
back (no event's contribution counted twice, none lost).

Events of 60 keys, timestamps out of order inside partitions, and keys idle past their TTL.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import re
import signal
import time
import urllib.parse

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.kafka_helpers import (
    free_port,
    read_topic,
    run_sluice,
    running_worker,
    stop_gracefully,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)

FEATURES = """
[pipelines.{name}.state]
ttl_s = 3
history_events = 6
{store}
[pipelines.{name}.state.features]
recent = {{ kind = "last", n = 4, fields = ["amount", "foreign"], mask = true, include_current = true }}
gap = {{ kind = "since_previous" }}
n_5s = {{ kind = "count", window_s = 5 }}
spend_5s = {{ kind = "sum", field = "amount", window_s = 5 }}
mean_5s = {{ kind = "mean", field = "amount", window_s = 5, include_current = true }}
low_5s = {{ kind = "min", field = "amount", window_s = 5 }}
high_5s = {{ kind = "max", field = "amount", window_s = 5 }}
spread_5s = {{ kind = "std", field = "amount", window_s = 5 }}
merchants_5s = {{ kind = "distinct", field = "merchant", window_s = 5 }}
"""


# The RocksDB store with a cache of 8 keys for 60: keys go to the database and back all the time.
ROCKSDB = 'store = "rocksdb"\ncache_keys = 8'


def stateful_config(tmp_path, kafka, name, topics, *, partitions=3, app_id=None, store="", settings=""):
    """A stateful pipeline's config; its app id (and so its changelog topic) new to this run.
    ``store`` goes in its [state] table, ``settings`` in the pipeline's own."""
    lines = f"emit_features = true\ncommit_interval_ms = 300\n{settings}\n" + FEATURES.format(name=name, store=store)
    return write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline=name,
        partitions=partitions,
        extra=lines,
        app_id=app_id or unique(f"{name}-app"),
        **topics,
    )


def keyed_events(count: int, seed: int, start: int = 0, keys: int | None = None) -> list[tuple[bytes, bytes, int]]:
    """(key, value, timestamp ms): 60 keys, ~20 ms apart, jittered so some arrive out of order;
    with ``keys``, the keys in turn (acct-00, acct-01, ...) instead of at random."""
    rng = random.Random(seed)
    base = int(time.time() * 1000) - 3_600_000
    out = []
    for i in range(start, start + count):
        key = f"acct-{i % keys:02d}" if keys else f"acct-{rng.randrange(60):02d}"
        event = {
            "id": f"ev-{seed}-{i}",
            "features": [round(rng.gauss(0, 1), 3) for _ in range(32)],
            "amount": round(rng.expovariate(0.1), 2),
            "foreign": rng.random() < 0.1,
            "merchant": rng.randrange(8),
        }
        out.append((key.encode(), orjson.dumps(event), base + 20 * i + rng.randrange(-300, 300)))
    return out


async def produce_timed(kafka: str, topic: str, events: list[tuple[bytes, bytes, int]], rate: float = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = []
        for i, (key, value, ts) in enumerate(events):
            sent.append(await producer.send(topic, value, key=key, timestamp_ms=ts))
            if rate and i % 50 == 49:
                await asyncio.sleep(50 / rate)
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def by_position(records) -> dict[tuple[int, int], list[dict]]:
    outputs: dict[tuple[int, int], list[dict]] = {}
    for record in records:
        body = orjson.loads(record.value)
        outputs.setdefault((body["source"]["partition"], body["source"]["offset"]), []).append(body)
    return outputs


async def backfilled(kafka: str, config, topic: str, count: int) -> dict[tuple[int, int], dict]:
    done = run_sluice("--config", str(config), "backfill", "--sink", f"kafka:{topic}", "--emit-features", timeout=300)
    assert done.returncode == 0, done.stderr
    outputs = by_position(await read_topic(kafka, topic, expected=count, within_s=60))
    assert len(outputs) == count
    return {position: bodies[-1] for position, bodies in outputs.items()}


def assert_same_features(live: dict[tuple[int, int], list[dict]], reference: dict[tuple[int, int], dict]) -> None:
    """Every live output (duplicates too) has its position's reference features and prediction."""
    assert set(live) == set(reference), f"{len(set(reference) - set(live))} positions without a live output"
    for position, bodies in live.items():
        want = reference[position]
        for body in bodies:
            assert body["id"] == want["id"]
            assert body["features"] == want["features"], f"{position}: {body['features']} != {want['features']}"
            assert abs(body["prediction"] - want["prediction"]) <= 1e-6, position


@pytest.mark.parametrize("store", ["", ROCKSDB], ids=["memory", "rocksdb"])
async def test_live_features_and_predictions_equal_a_backfill_from_offset_zero(kafka, tmp_path, store):
    name = "statelive"
    topics = topics_for(unique(name))
    config = stateful_config(tmp_path, kafka, name, topics, store=store)
    events = keyed_events(3000, seed=41)
    with running_worker(config, tmp_path / "worker.log", ready_text=f"pipeline {name}: ready") as worker:
        await produce_timed(kafka, topics["input_topic"], events[:1000])
        await produce_timed(kafka, topics["input_topic"], events[1000:], rate=1500)
        live = by_position(await read_topic(kafka, topics["output_topic"], expected=3000, within_s=120, idle=1))
        assert stop_gracefully(worker) == 0
    reference = await backfilled(kafka, config, unique("statelive-backfill"), 3000)
    assert_same_features(live, reference)
    # The stream holds what the test is about: repeated keys, idle keys forgotten, late events.
    bodies = [b for bs in live.values() for b in bs]
    assert any(b["features"]["n_5s"] >= 3 for b in bodies)
    starts = sum(1 for b in bodies if sum(row[-1] for row in b["features"]["recent"]) == 1)
    assert starts > 60, "no key went idle past its TTL (each of the 60 keys starts from nothing once)"


@pytest.mark.parametrize("store", ["", ROCKSDB], ids=["memory", "rocksdb"])
async def test_a_worker_killed_while_writing_its_changelog_restores_state_without_counting_twice(
    kafka, tmp_path, store
):
    name = "statekill"
    topics = topics_for(unique(name))
    app_id = unique(f"{name}-app")
    config = stateful_config(tmp_path, kafka, name, topics, app_id=app_id, store=store)
    events = keyed_events(3000, seed=42)
    # Known point: three commits wrote state, then a fourth sent its keys' state (acknowledged,
    # in transactions still open) and the process killed itself before committing.
    hook = {"SLUICE_TEST_KILL_IN_CHANGELOG_FLUSH_AFTER_COMMITS": "3"}
    with running_worker(config, tmp_path / "first.log", ready_text=f"pipeline {name}: ready", env=hook) as first:
        producing = asyncio.ensure_future(produce_timed(kafka, topics["input_topic"], events, rate=1000))
        assert await asyncio.to_thread(first.wait, 120) == -signal.SIGKILL
    second_log = tmp_path / "second.log"
    with running_worker(config, second_log, ready_text=f"pipeline {name}: ready") as second:
        await producing
        live = by_position(await read_topic(kafka, topics["output_topic"], expected=3000, within_s=120, idle=1))
        while len(live) < 3000:
            live = by_position(await read_topic(kafka, topics["output_topic"], expected=3000, within_s=5))
        assert stop_gracefully(second) == 0
    restored = second_log.read_text()
    assert "restored from" in restored
    if store:  # the local databases held what the three commits wrote: only what came after is read
        starts = [int(n) for n in re.findall(r"read from offset (\d+) to", restored)]
        assert starts and max(starts) > 0, restored
        assert (tmp_path / "state").is_dir()
    changelog = f"{app_id}.{name}-state-changelog"
    committed = await read_topic(kafka, changelog, expected=10**9, within_s=2, isolation_level="read_committed")
    everything = await read_topic(kafka, changelog, expected=10**9, within_s=2)
    assert len(everything) > len(committed), "the killed worker's changelog records were in an open transaction"
    reference = await backfilled(kafka, config, unique("statekill-backfill"), 3000)
    assert_same_features(live, reference)


# RocksDB: the two workers share one state directory, as two processes on one host would.
@pytest.mark.parametrize("store", ["", ROCKSDB], ids=["memory", "rocksdb"])
async def test_a_rebalance_to_a_second_worker_and_back_moves_state_with_its_partitions(kafka, tmp_path, store):
    name = "statereb"
    topics = topics_for(unique(name))
    config = stateful_config(tmp_path, kafka, name, topics, partitions=4, store=store)
    events = keyed_events(4000, seed=43)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with running_worker(config, first_log, ready_text=f"pipeline {name}: ready") as first:
        await produce_timed(kafka, topics["input_topic"], events[:1000])
        await read_topic(kafka, topics["output_topic"], expected=1000, within_s=60)
        producing = asyncio.ensure_future(produce_timed(kafka, topics["input_topic"], events[1000:3000], rate=400))
        with running_worker(config, second_log, ready_text=f"pipeline {name}: ready") as second:
            wait_for_log(first_log, "partitions revoked", proc=first)
            await producing
            await read_topic(kafka, topics["output_topic"], expected=3000, within_s=60)
            assert stop_gracefully(second) == 0
        await produce_timed(kafka, topics["input_topic"], events[3000:], rate=1000)
        live = by_position(await read_topic(kafka, topics["output_topic"], expected=4000, within_s=120, idle=1))
        while len(live) < 4000:
            live = by_position(await read_topic(kafka, topics["output_topic"], expected=4000, within_s=5))
        assert first.poll() is None
    assert "restored from" in second_log.read_text()
    reference = await backfilled(kafka, config, unique("statereb-backfill"), 4000)
    assert_same_features(live, reference)


def get_key(port: int, pipeline: str, key: str) -> tuple[int, dict, str | None]:
    """GET /pipelines/PIPELINE/keys/KEY without following a redirect: (status, body, Location)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", f"/pipelines/{pipeline}/keys/{urllib.parse.quote(key, safe='')}")
        reply = connection.getresponse()
        return reply.status, orjson.loads(reply.read()), reply.getheader("Location")
    finally:
        connection.close()


async def settled_answers(ports: dict[str, int], pipeline: str, key: str) -> dict[str, tuple[int, dict, str | None]]:
    """Each worker's answer for ``key`` once one owns it (200) and the other names it (307): while
    a rebalance settles, the documented answer is 503, ask again."""
    deadline = time.monotonic() + 60
    while True:
        answers = {w: await asyncio.to_thread(get_key, port, pipeline, key) for w, port in ports.items()}
        if sorted(status for status, _, _ in answers.values()) == [200, 307] or time.monotonic() > deadline:
            return answers
        assert all(status in (200, 307, 503) for status, _, _ in answers.values()), answers
        await asyncio.sleep(0.5)


async def test_a_key_is_served_by_the_worker_that_owns_it_and_the_other_names_the_owner(kafka, tmp_path):
    name = "statekeys"
    topics = topics_for(unique(name))
    config = stateful_config(tmp_path, kafka, name, topics, partitions=4)
    events = keyed_events(1200, seed=44)
    # Then one more event of every key, last: no key is idle past its TTL (3 s) when asked about
    # (one that is has been forgotten, and is a 404 by design).
    latest = max(ts for _, _, ts in events)
    events += [(key, value, latest + 1 + i) for i, (key, value, _) in enumerate(keyed_events(60, seed=45, keys=60))]
    ports = {"first": free_port(), "second": free_port()}
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    ready = f"pipeline {name}: ready"
    with (
        running_worker(config, first_log, ready_text=ready, web_port=ports["first"]) as first,
        running_worker(config, second_log, ready_text=ready, web_port=ports["second"]),
    ):
        deadline = time.monotonic() + 60
        while first_log.read_text().count("partitions assigned: ") < 2:  # its share after the rebalance
            assert time.monotonic() < deadline and first.poll() is None, first_log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        await produce_timed(kafka, topics["input_topic"], events)
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=90)
        last: dict[bytes, dict] = {}
        for record in sorted(outputs, key=lambda r: r.offset):
            last[record.key] = orjson.loads(record.value)
        for key in sorted(last)[:12]:
            answers = await settled_answers(ports, name, key.decode())
            owner = next(w for w, (status, _, _) in answers.items() if status == 200)
            other = next(w for w in answers if w != owner)
            status, body, location = answers[other]
            assert status == 307 and body["owner"] == f"127.0.0.1:{ports[owner]}"
            assert location == f"http://127.0.0.1:{ports[owner]}/pipelines/{name}/keys/{key.decode()}"
            _, state, _ = answers[owner]
            want = last[key]
            assert state["partition"] == want["source"]["partition"] == body["partition"]
            assert state["last_prediction"] == {
                "prediction": want["prediction"],
                "model_version": want["model_version"],
                "source": want["source"],
                "event_ts": want["event_ts"],
            }
            if state["latest_event"]["event_ts"] >= state["features_at"] - 3000:  # within its TTL (3 s)
                assert state["features"]["recent"] == want["features"]["recent"]  # includes that event
            else:  # idle past its TTL by the partition's time now: its next event starts from nothing
                assert state["features"]["recent"] == [[0.0, 0.0, 0.0]] * 4
        status, body, _ = get_key(ports["first"], name, "never-seen")
        assert status in (404, 307)
