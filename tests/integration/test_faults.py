"""Faults, against the real broker, proven by counting every event by its id.

Each test says exactly which events are missing if any are, and reports duplicates:
at-least-once allows them, bounded by what was in flight when the fault hit.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys

import orjson

from app.demo_events import demo_events
from tests.integration.kafka_helpers import (
    ROOT,
    committed_offsets,
    finished,
    free_port,
    produce_raw,
    read_topic,
    running_worker,
    scrape,
    start_producing,
    stop_gracefully,
    tally,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)


def restart_broker() -> None:
    subprocess.run([str(ROOT / "docker" / "kafka-local"), "restart"], check=True, timeout=180)


def report(test: str, produced: int, outputs: int, duplicates: dict[str, int]) -> None:
    extra = sum(n - 1 for n in duplicates.values())
    print(f"\n{test}: {produced} events, {outputs} predictions, {extra} duplicate predictions", file=sys.stderr)


async def test_a_worker_killed_mid_stream_loses_nothing_when_started_again(kafka, tmp_path):
    name = unique("kill")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="kill", **topics)
    count, rate, seed = 4000, 800, 21
    expected = {e.id for e in demo_events(count, seed=seed)}

    with running_worker(config, tmp_path / "first.log", ready_text="pipeline kill: scoring") as first:
        producer = start_producing(config, count, rate, seed)
        await read_topic(kafka, topics["output_topic"], expected=count // 4, within_s=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    with running_worker(config, tmp_path / "second.log", ready_text="pipeline kill: scoring") as second:
        finished(producer)
        outputs = await read_topic(kafka, topics["output_topic"], expected=count, within_s=90, idle=2)
        assert stop_gracefully(second) == 0, "SIGTERM: finish the batch in flight, commit, exit 0"
    assert "pipeline kill stopped" in (tmp_path / "second.log").read_text()

    missing, duplicates = tally(outputs, expected)
    assert not missing, f"{len(missing)} events never scored, e.g. {missing[:10]}"
    report("SIGKILL", count, len(outputs), duplicates)
    # Redelivered at most: what arrived since the last commit (1 s interval) plus the queue.
    assert sum(n - 1 for n in duplicates.values()) <= 2 * rate + 4 * 512


async def test_a_broker_restart_mid_stream_is_survived_without_loss(kafka, tmp_path):
    name = unique("restart")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="restart", **topics)
    count, seed = 3000, 22
    expected = {e.id for e in demo_events(count, seed=seed)}
    events = list(demo_events(count, seed=seed))
    log = tmp_path / "worker.log"

    with running_worker(config, log, ready_text="pipeline restart: scoring") as worker:
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events[:1000]])
        await read_topic(kafka, topics["output_topic"], expected=500, within_s=60)
        await asyncio.to_thread(restart_broker)
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events[1000:]])
        outputs = await read_topic(kafka, topics["output_topic"], expected=count, within_s=120, idle=2)
        assert worker.poll() is None, f"the worker died with the broker:\n{log.read_text()[-3000:]}"

    missing, duplicates = tally(outputs, expected)
    assert not missing, f"{len(missing)} events never scored, e.g. {missing[:10]}"
    report("broker restart", count, len(outputs), duplicates)
    assert "stopped on an error" not in log.read_text()


async def test_a_rebalance_to_a_second_worker_and_back_loses_nothing(kafka, tmp_path):
    name = unique("rebalance")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="reb", partitions=4, **topics)
    count, rate, seed = 4000, 600, 23
    expected = {e.id for e in demo_events(count, seed=seed)}
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    with running_worker(config, first_log, ready_text="partitions assigned: ") as first:
        producer = start_producing(config, count, rate, seed)
        await read_topic(kafka, topics["output_topic"], expected=count // 5, within_s=60)
        with running_worker(config, second_log, ready_text="partitions assigned: ") as second:
            wait_for_log(first_log, "partitions revoked", proc=first)
            # The first worker hands its partitions over cleanly, and exits 0.
            assert stop_gracefully(first) == 0
            finished(producer)
            outputs = await read_topic(kafka, topics["output_topic"], expected=count, within_s=90, idle=2)
            assert second.poll() is None

    assert f"{topics['input_topic']}[" in second_log.read_text().split("partitions assigned: ", 1)[1]
    missing, duplicates = tally(outputs, expected)
    assert not missing, f"{len(missing)} events never scored, e.g. {missing[:10]}"
    report("rebalance", count, len(outputs), duplicates)


def bad_inputs() -> list[tuple[str, bytes | None]]:
    """One of each kind of event that cannot be scored, with the error it must be dead-lettered with."""
    good = orjson.loads(next(demo_events(1, seed=5)).value)
    rng = random.Random(7)
    return [
        ("InvalidJSON", b"not json"),
        ("InvalidJSON", bytes(rng.randrange(128, 256) for _ in range(64))),  # random bytes, not UTF-8
        ("Tombstone", None),
        ("EmptyValue", b""),
        ("NotAnObject", b"[1, 2, 3]"),
        ("NotAnObject", b'"a string"'),
        ("MissingField", orjson.dumps({k: v for k, v in good.items() if k != "id"})),
        ("MissingField", orjson.dumps({k: v for k, v in good.items() if k != "features"})),
        ("WrongType", orjson.dumps({**good, "id": [1]})),
        ("WrongType", orjson.dumps({**good, "features": ["a"] * 32})),
        ("WrongShape", orjson.dumps({**good, "features": good["features"][:31]})),
        ("WrongShape", orjson.dumps({**good, "features": [good["features"], [1]]})),
        ("NonFinite", orjson.dumps({**good, "features": [1e39, *good["features"][1:]]})),
        ("PayloadTooLarge", orjson.dumps({**good, "padding": "x" * 5000})),
    ]


async def test_a_corpus_of_bad_inputs_is_dead_lettered_with_reasons_and_every_valid_event_scored(kafka, tmp_path):
    name = unique("corpus")
    topics = topics_for(name)
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="corpus", partitions=1, extra="max_payload_bytes = 4096", **topics
    )
    good = list(demo_events(300, seed=24))
    bad = bad_inputs()
    items: list[tuple[bytes | None, bytes | None]] = []
    expected_errors: dict[int, str] = {}
    for i, event in enumerate(good):
        items.append((event.key, event.value))
        if i % 20 == 10 and bad:
            error, value = bad.pop(0)
            expected_errors[len(items)] = error
            items.append((b"bad", value))
    assert not bad

    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline corpus: scoring") as worker:
        await produce_raw(kafka, topics["input_topic"], items)
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(good), within_s=60)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=len(expected_errors), within_s=30)
        assert worker.poll() is None

    missing, _ = tally(outputs, {e.id for e in good})
    assert not missing, f"valid events not scored: {missing}"
    letters = {d["source"]["offset"]: d for d in (orjson.loads(r.value) for r in dead)}
    assert {offset: d["error"] for offset, d in letters.items()} == expected_errors
    for offset, letter in letters.items():
        original = items[offset][1]
        assert letter["reason"], "every dead letter says why"
        assert letter["pipeline"] == "corpus" and letter["source"]["topic"] == topics["input_topic"]
        assert letter["dead_lettered_at"] > 0
        if "value_base64" in letter:
            assert original is not None and letter["value_base64"]
        else:
            assert letter["value"] == (None if original is None else original.decode())


async def test_a_model_that_raises_on_one_input_dead_letters_only_that_input(kafka, tmp_path):
    name = unique("poison")
    topics = topics_for(name)
    weights = ROOT / "models" / "weights" / "fraud-mlp.pt"
    model = f'class = "tests.integration.faulty_models:PoisonedFraudMLP"\nstate_dict = "{weights}"'
    config = write_config(tmp_path, bootstrap=kafka, pipeline="poison", model=model, **topics)
    events = [orjson.loads(e.value) for e in demo_events(600, seed=25)]
    poisoned = {events[i]["id"] for i in (17, 250, 251, 599)}
    for event in events:
        if event["id"] in poisoned:
            event["features"][0] = 1234.5

    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline poison: scoring") as worker:
        await produce_raw(kafka, topics["input_topic"], [(e["account"].encode(), orjson.dumps(e)) for e in events])
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events) - len(poisoned), within_s=60)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=len(poisoned), within_s=30, idle=1)
        assert worker.poll() is None

    missing, _ = tally(outputs, {e["id"] for e in events} - poisoned)
    assert not missing, f"events the model can score were not: {missing[:10]}"
    letters = [orjson.loads(r.value) for r in dead]
    assert sorted(orjson.loads(d["value"])["id"] for d in letters) == sorted(poisoned)
    assert {d["error"] for d in letters} == {"ModelError"}
    assert all("ValueError: feature 0 is 1234.5" in d["reason"] for d in letters)


async def test_a_model_down_on_everything_stops_consuming_and_resumes_when_it_recovers(kafka, tmp_path):
    name = unique("down")
    topics = topics_for(name)
    flag = tmp_path / "broken"
    weights = ROOT / "models" / "weights" / "fraud-mlp.pt"
    model = (
        f'class = "tests.integration.faulty_models:SwitchableFraudMLP"\nstate_dict = "{weights}"\n'
        f'init_args = {{ broken_flag = "{flag}" }}'
    )
    config = write_config(tmp_path, bootstrap=kafka, pipeline="down", model=model, **topics)
    events = list(demo_events(500, seed=26))
    log = tmp_path / "worker.log"

    port = free_port()
    unavailable = ("sluice_model_unavailable", (("pipeline", "down"),))
    with running_worker(config, log, ready_text="pipeline down: scoring", web_port=port) as worker:
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events[:100]])
        await read_topic(kafka, topics["output_topic"], expected=100, within_s=60)
        assert scrape(port)[unavailable] == 0
        # The first 100 are committed (every commit_interval_ms) before the model breaks.
        committed_before = await committed_offsets(kafka, "down-app.down", topics["input_topic"])
        while sum(o or 0 for o in committed_before.values()) < 100:
            await asyncio.sleep(0.2)
            committed_before = await committed_offsets(kafka, "down-app.down", topics["input_topic"])
        flag.touch()
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events[100:]])
        wait_for_log(log, "MODEL UNAVAILABLE", proc=worker)
        await asyncio.sleep(3)  # the worker retries meanwhile; nothing may be committed or dead-lettered
        during = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=2)
        assert len(during) == 100, "nothing scored while the model is down"
        assert scrape(port)[unavailable] == 1
        committed_during = await committed_offsets(kafka, "down-app.down", topics["input_topic"])
        assert committed_during == committed_before, "nothing is committed past the batch the model failed on"
        flag.unlink()
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=60)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=1, within_s=2)
        assert worker.poll() is None
        assert scrape(port)[unavailable] == 0, "the gauge falls back once the model recovers"

    missing, _ = tally(outputs, {e.id for e in events})
    assert not missing, f"{len(missing)} events never scored after the model recovered, e.g. {missing[:10]}"
    assert dead == [], "a model that is down is not a reason to dead-letter the stream"
    assert "the model recovered after" in log.read_text()
