"""Backfill against the real broker: parity with live scoring, resume, concurrency, edge cases."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.demo_events import demo_events
from app.topics import ensure_topics
from tests.integration.kafka_helpers import (
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    unique,
    write_config,
)

GROUP = "parity-app.parity"  # the live worker's consumer group: "<app id>.<pipeline>"


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
        # Wait for the worker to commit what it scored (a condition, not a guess at its interval).
        before = await committed(kafka, GROUP, topics["input_topic"], 3)
        for _ in range(300):
            if sum(o or 0 for o in before.values()) == len(first):
                break
            await asyncio.sleep(0.1)
            before = await committed(kafka, GROUP, topics["input_topic"], 3)
        result = run_sluice(
            "--config", str(config), "backfill", "--sink", f"file:{out}", "--state-dir", str(tmp_path / "state")
        )
        assert result.returncode == 0, result.stderr
        assert "backfill done: 300 events, 300 predictions" in result.stderr
        assert "resume with --resume parity-" in result.stderr, "the run id must show at the default log level"
        assert "300/300" in result.stderr
        after_backfill = await committed(kafka, GROUP, topics["input_topic"], 3)
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
    assert result.stderr.strip().splitlines() == [
        f"sluice backfill: pipeline ghost: topic(s) {name}-in do not exist on {kafka}, nothing to replay: "
        f"check its input_topics in {config}"
    ]


def positions_in(checkpoint: dict[str, Any]) -> int:
    """How many events a saved checkpoint counts as written."""
    start = {(t, p): first for t, p, first, _ in checkpoint["plan"]["partitions"]}
    return sum(at - start[(t, p)] for t, p, at in checkpoint["position"])


def read_outputs(out: Path) -> list[tuple[int, int]]:
    """The source (partition, offset) of every prediction in a JSON lines file or a Parquet folder."""
    if out.suffix == ".jsonl":
        return [(b["source"]["partition"], b["source"]["offset"]) for b in read_jsonl(out)]
    table = pq.read_table(out).to_pydict()
    return list(zip(table["source_partition"], table["source_offset"], strict=True))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
async def test_a_backfill_killed_after_a_checkpoint_resumes_with_every_position_once(kafka, tmp_path, suffix):
    name = unique("resume")
    topics = topics_for(name)
    # Small batches: the crash hook checkpoints after each one, and stops the run long before its end.
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="resume", partitions=2, extra="max_batch_size = 50", **topics
    )
    events = list(demo_events(1_000, seed=34))
    items: list[tuple[bytes | None, bytes | None]] = [(e.key, e.value) for e in events]
    for at in (10, 400, 900):  # dead letters, too, are counted once
        items.insert(at, (b"bad", b"broken"))
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=2)
    await produce_raw(kafka, topics["input_topic"], items)
    out, state = tmp_path / f"scores{suffix}", tmp_path / "state"
    checkpoint = state / "run-1.part1of1.json"
    args = ("--config", str(config), "backfill", "--sink", f"file:{out}", "--state-dir", str(state))

    killed = run_sluice(*args, "--run-id", "run-1", env={"SLUICE_TEST_CRASH_AFTER_CHECKPOINTS": "3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = json.loads(checkpoint.read_text())
    assert not interrupted["done"]
    counted = positions_in(interrupted)
    assert 0 < counted < len(items)
    dead_letters = tmp_path / "scores.dead-letters.jsonl"
    lengths = interrupted["sink"]["lengths"]
    dead_counted = dead_letters.read_bytes()[: lengths[dead_letters.name]].count(b"\n")
    if suffix == ".parquet":
        # What the checkpoint counts is in closed parts, readable on their own; the part in
        # progress at the kill has no footer, and is hidden from readers.
        parts = interrupted["sink"]["parts"]
        assert sum(pq.read_table(out / part).num_rows for part in parts) + dead_counted == counted
        (torn,) = [p for p in out.iterdir() if p.name.endswith(".inprogress")]
        with pytest.raises(pa.ArrowInvalid):
            pq.read_table(torn)
    else:
        assert out.read_bytes()[: lengths[out.name]].count(b"\n") + dead_counted == counted
        assert out.stat().st_size > lengths[out.name], "the kill came after outputs the checkpoint does not count"

    # A resume writes to the files only when the command line names their sink again.
    on_disk = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and f.parent != state}
    unnamed = run_sluice("--config", str(config), "backfill", "--resume", "run-1", "--state-dir", str(state))
    assert unnamed.returncode == 2, unnamed.stderr
    assert unnamed.stderr.strip().splitlines() == [
        f"sluice backfill: checkpoint {checkpoint}: sink: run run-1 was started with --sink 'file:{out}'; "
        "a resume writes to a file sink, and cuts it back to the checkpoint, only when the command line names it: "
        f"repeat --sink 'file:{out}' if it is the sink you mean to write to"
    ]
    assert {f: f.read_bytes() for f in on_disk} == on_disk
    assert json.loads(checkpoint.read_text()) == interrupted

    resumed = run_sluice(*args, "--resume", "run-1", timeout=300)  # args name the same --sink file:PATH
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(checkpoint.read_text())["done"]
    scored = read_outputs(out)
    dead = [(d["source"]["partition"], d["source"]["offset"]) for d in read_jsonl(dead_letters)]
    produced = await read_topic(kafka, topics["input_topic"], expected=len(items))
    assert sorted(scored + dead) == sorted((r.partition, r.offset) for r in produced), "each position exactly once"
    assert len(dead) == 3
    assert not [p for p in out.parent.rglob(".*")], "no part in progress is left behind"
