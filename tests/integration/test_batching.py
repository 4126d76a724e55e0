"""The adaptive batcher in a real worker: the heavy model under a trickle, then a burst."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson

from app.demo_events import demo_events
from tests.integration.kafka_helpers import produce_raw, read_topic, running_worker, unique, write_config

STATS = re.compile(r"pipeline burst: (\d+) events in [\d.]+s .*?mean size ([\d.]+), max (\d+);")


def batch_stats(log: str) -> list[tuple[int, float, int]]:
    return [(int(n), float(mean), int(largest)) for n, mean, largest in STATS.findall(log)]


async def stats_covering(log_path: Path, events: int, within_s: float = 60) -> list[tuple[int, float, int]]:
    """The worker's batch statistics once its lines account for ``events`` events: waits for the
    log to say so instead of guessing how long the next stats line takes."""
    deadline = time.monotonic() + within_s
    while True:
        stats = batch_stats(await asyncio.to_thread(log_path.read_text))
        if sum(n for n, _, _ in stats) >= events or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


async def test_under_a_burst_the_heavy_model_keeps_every_event_and_batches_grow(kafka, tmp_path):
    name = unique("burst")
    topics = {"input_topic": f"{name}-in", "output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq"}
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="burst",
        # Its own app id: the transformer keeps per-key state, in a changelog named after it
        # (a shared one would restore an earlier run's state, and never be deleted).
        app_id=name,
        partitions=2,
        demo="fraud-transformer",
        extra="latency_budget_ms = 50\nmax_batch_size = 256",
        app_extra="stats_interval_s = 1",
        **topics,
    )
    events = list(demo_events(3_000, seed=21))
    trickle, burst = events[:40], events[40:]
    log_path = tmp_path / "worker.log"

    # Ready: partitions assigned and their state restored, so the trickle never waits on the start.
    with running_worker(config, log_path, ready_text="pipeline burst: ready"):
        for event in trickle:  # 20 events/s: each one should go alone
            await produce_raw(kafka, topics["input_topic"], [(event.key, event.value)])
            await asyncio.sleep(0.05)
        await read_topic(kafka, topics["output_topic"], expected=len(trickle), within_s=60)
        trickle_stats = await stats_covering(log_path, len(trickle))
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in burst])
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=120)
        all_stats = await stats_covering(log_path, len(events))

    ids = {orjson.loads(r.value)["id"] for r in outputs}
    missing = sorted({e.id for e in events} - ids)
    assert not missing, f"{len(missing)} events got no prediction, e.g. {missing[:10]}"
    assert trickle_stats, "the worker logged no batch statistics during the trickle"
    burst_stats = all_stats[len(trickle_stats) :]
    assert burst_stats, "the worker logged no batch statistics during the burst"
    trickle_max = max(largest for _, _, largest in trickle_stats)
    burst_max = max(largest for _, _, largest in burst_stats)
    burst_mean = max(mean for _, mean, _ in burst_stats)
    assert trickle_max <= 4, f"a trickle should be scored event by event, saw batches of {trickle_max}"
    assert burst_max > 4 * trickle_max and burst_mean > 8, (trickle_stats, burst_stats)
    assert burst_max <= 256
