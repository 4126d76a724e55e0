"""``sluice produce``: write synthetic demo transactions to a topic, optionally at a fixed rate."""

from __future__ import annotations

import asyncio
import sys
import time

from aiokafka import AIOKafkaProducer
from faust.cli import AppCommand, option

from app.demo_events import demo_events
from app.main import app, config
from app.topics import ensure_topics

FLUSH_EVERY = 2_000


class Progress:
    """A one-line progress report (count, rate, ETA) at most once a second, on stderr."""

    def __init__(self, total: int, what: str) -> None:
        self.total = total
        self.what = what
        self.started = time.monotonic()
        self.last = self.started

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 1.0:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        end = "\n" if final or not sys.stderr.isatty() else "\r"
        tail = f"in {elapsed:.1f}s" if final else f"ETA {eta:.0f}s"
        print(f"{self.what}: {done}/{self.total} ({rate:,.0f}/s, {tail})", end=end, file=sys.stderr, flush=True)


@app.command(
    option("--count", "-n", type=int, default=1000, show_default=True, help="How many events to produce."),
    option("--topic", "-t", default=None, help="Topic to write to (default: the first pipeline's first input)."),
    option(
        "--rate",
        "-r",
        type=float,
        default=0.0,
        help="Events per second, open loop (0 = as fast as possible).",
    ),
    option("--seed", type=int, default=1, show_default=True, help="Seed: the same seed gives the same events."),
)
async def produce(self: AppCommand, count: int, topic: str | None, rate: float, seed: int) -> None:
    """Produce synthetic card transactions (the demo models' input) to Kafka."""
    topic = topic or config.pipelines[0].input_topics[0]
    bootstrap = config.bootstrap_servers
    await ensure_topics(bootstrap, [topic], create=config.app.create_topics, partitions=config.app.topic_partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=True)
    await producer.start()
    progress = Progress(count, f"produced to {topic}")
    try:
        pending = []
        started = time.monotonic()
        for n, event in enumerate(demo_events(count, seed=seed), start=1):
            if rate > 0:
                # Open loop: event n is due at start + n/rate whatever the broker does.
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(await producer.send(topic, event.value, key=event.key))
            if len(pending) >= FLUSH_EVERY:
                await asyncio.gather(*pending)
                pending.clear()
            progress.update(n)
        await asyncio.gather(*pending)
        progress.update(count, final=True)
    finally:
        await producer.stop()
