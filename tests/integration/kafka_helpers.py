"""Helpers for integration tests: unique topics, config files, worker processes, reading topics.

Everything here talks to the real broker through aiokafka or runs the real `sluice` CLI.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from app.config.pipeline_toml import demo_inputs, write_pipeline_config
from app.topics import partitions_of

ROOT = Path(__file__).resolve().parents[2]


# The suffixes `unique` handed out in this test process: every topic a test creates (and those a
# worker derives from them: changelogs, dead letters) carries one, so the session can delete them.
_suffixes_handed_out: set[str] = set()


def unique(name: str) -> str:
    """A topic or group name no other test (or earlier run) uses."""
    suffix = uuid.uuid4().hex[:10]
    _suffixes_handed_out.add(suffix)
    return f"{name}-{suffix}"


async def delete_topics_of_this_run(bootstrap: str) -> int:
    """Delete every topic whose name carries a suffix `unique` handed out in this process.

    Left behind, a run's few hundred topics pile up in the broker's data directory, and a broker
    with thousands of partitions takes minutes to start (it loads and, after a crash, recovers
    each one). Returns how many topics were deleted.
    """
    if not _suffixes_handed_out:
        return 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if any(s in t for s in _suffixes_handed_out)]
        for start in range(0, len(ours), 100):
            await admin.delete_topics(ours[start : start + 100], timeout_ms=60_000)
        return len(ours)
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    directory: Path,
    *,
    bootstrap: str,
    pipeline: str,
    input_topic: str,
    output_topic: str,
    dead_letter_topic: str,
    partitions: int = 3,
    demo: str = "fraud-mlp",
    model: str | None = None,
    inputs: str | None = None,
    extra: str = "",
    app_extra: str = "",
    app_id: str | None = None,
) -> Path:
    """``directory/<pipeline>.toml``: one pipeline, a demo model (and its inputs, and its per-key
    features) unless ``model`` (and ``inputs``) say otherwise.

    Its model decisions topic is the test's own, unless ``app_extra`` names one: a decision is kept
    for good, and a test that swapped a pipeline's model would otherwise change what the same
    pipeline of a later test (or a later run) serves at start."""
    if "decisions_topic" not in app_extra:
        # First: app_extra may open a sub-table ([app.security]) that would take the key instead.
        app_extra = f'decisions_topic = "{unique(f"{pipeline}-decisions")}"\n' + app_extra
    return write_pipeline_config(
        directory / f"{pipeline}.toml",
        bootstrap=bootstrap,
        pipeline=pipeline,
        input_topic=input_topic,
        output_topic=output_topic,
        dead_letter_topic=dead_letter_topic,
        app_id=app_id,
        partitions=partitions,
        demo=demo,
        model=model,
        inputs=inputs or demo_inputs(demo),
        extra=extra,
        app_extra=app_extra,
    )


def sluice(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def run_sluice(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sluice(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def topics_for(name: str) -> dict[str, str]:
    """Input, output and dead-letter topic names for a test's pipeline, as ``write_config`` takes them."""
    return {"input_topic": f"{name}-in", "output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq"}


def start_producing(config: Path, count: int, rate: float, seed: int) -> subprocess.Popen[str]:
    """A stream of ``count`` demo events at ``rate`` per second, produced in the background by `sluice produce`."""
    args = ("--config", str(config), "produce", "--count", str(count), "--rate", str(rate), "--seed", str(seed))
    return subprocess.Popen(sluice(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(producer: subprocess.Popen[str]) -> None:
    """Wait for a background producer; the test fails if it did not produce everything."""
    _, err = producer.communicate(timeout=120)
    assert producer.returncode == 0, err


@contextmanager
def running_worker(
    config: Path,
    log_path: Path,
    *,
    ready_text: str,
    timeout: float = 90,
    web_port: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A `sluice worker` process, ready once its log shows ``ready_text``; stopped with SIGTERM after."""
    datadir = log_path.parent / f"{log_path.stem}-data"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            sluice(
                "--config",
                str(config),
                "--datadir",
                str(datadir),
                "worker",
                "-l",
                "info",
                "--web-port",
                str(web_port or free_port()),
            ),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    try:
        wait_for_log(log_path, ready_text, proc=proc, timeout=timeout)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int,
    within_s: float = 60,
    idle: float = 0.0,
    isolation_level: str = "read_uncommitted",
) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the start, waiting until ``expected`` have arrived (or ``within_s``).

    With ``idle`` > 0 it keeps reading that long after reaching ``expected``, to catch extras.
    ``isolation_level="read_committed"`` reads only committed transactions (exactly-once outputs).
    """
    deadline = time.monotonic() + within_s
    partitions = await partitions_of(bootstrap, topic)
    while not partitions and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, isolation_level=isolation_level
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        # An explicit seek: seek_to_beginning can lose a race with the consumer's own reset to
        # the latest offset, and the test would then wait for records it never reads.
        beginning = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, beginning[tp])
        records: list[ConsumerRecord] = []
        reached_at: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if len(records) >= expected:
                reached_at = reached_at or time.monotonic()
                if time.monotonic() - reached_at >= idle:
                    break
        return records
    finally:
        await consumer.stop()


async def produce_raw(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def tally(records: list[ConsumerRecord], expected_ids: set[str]) -> tuple[list[str], dict[str, int]]:
    """The expected ids with no output record, and the ids with more than one (and how many)."""
    counts = Counter(orjson.loads(r.value)["id"] for r in records)
    missing = sorted(expected_ids - set(counts))
    duplicates = {i: n for i, n in counts.items() if n > 1}
    return missing, duplicates


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The consumer group's committed next-offset per partition of ``topic`` (None: nothing committed)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in await partitions_of(bootstrap, topic)}
    finally:
        await consumer.stop()


def wait_for_log(log_path: Path, text: str, *, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text(errors="replace"):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log after {timeout}s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)


def stop_gracefully(proc: subprocess.Popen[bytes], *, within_s: float = 30) -> int:
    """SIGTERM, and the exit status (the test fails if the worker takes longer than ``within_s``)."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=within_s)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the worker's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples
