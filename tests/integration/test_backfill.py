"""Backfill against the real broker: parity with live scoring, resume, concurrency, edge cases."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.demo_events import demo_events
from app.topics import ensure_topics
from tests.integration.kafka_helpers import (
    ROOT,
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    sluice,
    unique,
    write_config,
)

TRANSFORMER_INPUTS = '[{ field = "features", shape = [32] }, { field = "history", shape = [16, 4] }]'


def topics_for(name: str) -> dict[str, str]:
    return {"input_topic": f"{name}-in", "output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq"}


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def test_backfill_matches_live_scoring_and_leaves_the_live_worker_alone(kafka, tmp_path):
    name = unique("parity")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="parity", partitions=3, **topics)
    first, later = list(demo_events(300, seed=31)), list(demo_events(50, seed=32))
    out = tmp_path / "backfill.jsonl"

    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline parity: scoring"):
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in first])
        live = await read_topic(kafka, topics["output_topic"], expected=len(first), within_s=60)
        await asyncio.sleep(1.5)  # one commit interval
        before = await committed(kafka, "sluice-parity", topics["input_topic"], 3)
        result = run_sluice(
            "--config", str(config), "backfill", "--sink", f"file:{out}", "--state-dir", str(tmp_path / "state")
        )
        assert result.returncode == 0, result.stderr
        assert "backfill done: 300 events, 300 predictions" in result.stderr
        assert "resume with --resume parity-" in result.stderr, "the run id must show at the default log level"
        assert "300/300" in result.stderr
        after_backfill = await committed(kafka, "sluice-parity", topics["input_topic"], 3)
        # The live worker keeps scoring what arrives during and after the backfill.
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in later])
        live_all = await read_topic(kafka, topics["output_topic"], expected=len(first) + len(later), within_s=60)

    assert after_backfill == before, "the backfill must not move the live worker's committed offsets"
    assert sum(o or 0 for o in before.values()) == len(first)
    assert {orjson.loads(r.value)["id"] for r in live_all} >= {e.id for e in first + later}
    live_scores = {orjson.loads(r.value)["id"]: orjson.loads(r.value)["prediction"] for r in live}
    backfilled = read_jsonl(out)
    assert len(backfilled) == len(first), "the backfill stops at the end offsets it saw when it started"
    for body in backfilled:
        # Batches of different sizes may take different BLAS paths; float32 results then
        # differ in the last bits at most, far below any decision threshold.
        assert abs(body["prediction"] - live_scores[body["id"]]) <= 1e-6, body["id"]


async def test_empty_topics_and_empty_partitions_backfill_cleanly(kafka, tmp_path):
    name = unique("sparse")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="sparse", partitions=8, **topics)
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=8)
    empty = run_sluice(
        "--config",
        str(config),
        "backfill",
        "--sink",
        f"file:{tmp_path / 'empty.jsonl'}",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert empty.returncode == 0, empty.stderr
    assert "backfill done: 0 events" in empty.stderr
    events = list(demo_events(3, seed=33))  # 3 events over 8 partitions: most stay empty
    await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events])
    out = tmp_path / "sparse.jsonl"
    result = run_sluice(
        "--config", str(config), "backfill", "--sink", f"file:{out}", "--state-dir", str(tmp_path / "state")
    )
    assert result.returncode == 0, result.stderr
    assert sorted(b["id"] for b in read_jsonl(out)) == sorted(e.id for e in events)


def test_a_topic_that_does_not_exist_is_a_clear_error(kafka, tmp_path):
    name = unique("ghost")
    config = write_config(tmp_path, bootstrap=kafka, pipeline="ghost", **topics_for(name))
    result = run_sluice(
        "--config",
        str(config),
        "backfill",
        "--sink",
        f"file:{tmp_path / 'x.jsonl'}",
        "--state-dir",
        str(tmp_path / "state"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{name}-in do not exist" in result.stderr


async def test_an_interrupted_backfill_resumes_with_no_gap(kafka, tmp_path):
    name = unique("resume")
    topics = topics_for(name)
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="resume",
        partitions=2,
        model='demo = "fraud-transformer"',
        inputs=TRANSFORMER_INPUTS,
        **topics,
    )
    events = list(demo_events(12_000, seed=34))
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=2)
    await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events])
    out, state = tmp_path / "resume.jsonl", tmp_path / "state"
    checkpoint = state / "run-1.part1of1.json"
    proc = subprocess.Popen(  # noqa: ASYNC220 - the backfill must run as its own process
        sluice(
            "--config", str(config), "backfill", "--sink", f"file:{out}", "--state-dir", str(state), "--run-id", "run-1"
        ),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if checkpoint.exists():
                saved = json.loads(checkpoint.read_text())
                if saved["position"] and not saved["done"]:
                    break
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # a crash: nothing is flushed or saved on the way out
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted = json.loads(checkpoint.read_text())
    assert not interrupted["done"], "the backfill finished before it could be interrupted"
    resumed = run_sluice(
        "--config",
        str(config),
        "backfill",
        "--resume",
        "run-1",
        "--sink",
        "ignored:x",
        "--state-dir",
        str(state),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    scored = read_jsonl(out)
    positions = {(b["source"]["partition"], b["source"]["offset"]) for b in scored}
    assert {b["id"] for b in scored} == {e.id for e in events}, "an event was lost between the two runs"
    assert len(positions) == len(events)
    assert json.loads(checkpoint.read_text())["done"]
