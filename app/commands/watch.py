"""``sluice watch``: print predictions (or dead letters) as they arrive on a topic; with
``--compare``, each model's evidence side by side, read from the workers' ``/metrics``. Avro
outputs (``output_format = "avro"``) are read by their schema, from the config's registry."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence

import aiohttp
import numpy as np
import orjson
from faust.cli import AppCommand, option

from app.avro_outputs import WireValues
from app.kafka_clients import connection, make_consumer
from app.main import app, config
from app.model_compare import Evidence, read_workers, render, worker_problem
from app.topics import check_broker, partitions_of
from streams.errors import CommandLineError, TopicMissingError, exit_on_operator_error
from streams.kafka.replay import start_consumer, stop_consumer
from streams.kafka.tail import Tail
from streams.records import Partition, UndecodableRecord


def timing_of(value: bytes | None) -> tuple[int, int] | None:
    """A prediction's (event_ts, latency_ms), or None for anything else on the topic."""
    try:
        body = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    event_ts, latency = body.get("event_ts"), body.get("latency_ms")
    if type(event_ts) is not int or type(latency) is not int:
        return None
    return event_ts, latency


def describe(value: bytes | None) -> str:
    """One readable line for a prediction or a dead letter."""
    if value is None:
        return "(no value: a tombstone)"
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value[:120].decode("utf-8", "replace")
    if not isinstance(body, dict):
        return value[:120].decode("utf-8", "replace")
    if "prediction" in body:
        src = body.get("source", {})
        prediction = body["prediction"]
        shown = f"{prediction:.4f}" if isinstance(prediction, float) else str(prediction)
        return (
            f"{body.get('id')!s:<18} {shown:>8}  {body.get('model')} v{body.get('model_version')}"
            f"  {src.get('topic')}[{src.get('partition')}]@{src.get('offset')}  {body.get('latency_ms')} ms"
        )
    if "error" in body:
        return f"DEAD LETTER {body['error']}: {body.get('reason')}"
    return orjson.dumps(body).decode()


@app.command(
    option("--topic", "-t", default=None, help="Topic to read (default: the first pipeline's output topic)."),
    option("--from-beginning", is_flag=True, default=False, help="Start at the oldest record."),
    option("--since", type=float, default=0.0, help="Start at records appended in the last SECONDS."),
    option("--count", "-n", type=int, default=0, help="Stop after this many records (0 = no limit)."),
    option("--seconds", "-s", type=float, default=0.0, help="Stop after this many seconds (0 = no limit)."),
    option("--summary", is_flag=True, default=False, help="Print totals and latency percentiles."),
    option(
        "--compare",
        is_flag=True,
        default=False,
        help="Each model side by side (champion, canary, fallback, shadows): events, errors, timeouts, skips, "
        "batch time, mean score, a shadow's agreement; read from the workers' /metrics, refreshed; with "
        "--count, the number of summaries.",
    ),
    option(
        "--worker",
        "workers",
        multiple=True,
        help="With --compare: a worker's web address, repeatable, summed (default: this config's web_bind:web_port).",
    ),
    option("--every", type=float, default=None, help="With --compare: seconds between summaries (default 5)."),
)
async def watch(
    self: AppCommand,
    topic: str | None,
    from_beginning: bool,
    since: float,
    count: int,
    seconds: float,
    summary: bool,
    compare: bool,
    workers: tuple[str, ...],
    every: float | None,
) -> None:
    """Print predictions as they arrive (id, prediction, model, source position, latency)."""
    with exit_on_operator_error("watch"):
        for flag, value in (("--count", count), ("--seconds", seconds), ("--since", since)):
            if not (math.isfinite(value) and value >= 0):
                raise CommandLineError(f"{flag} {value}: expected a number >= 0")
        if not compare and (workers or every is not None):
            raise CommandLineError(f"{'--worker' if workers else '--every'} goes with --compare")
        if compare:
            topic_flags = {"--topic": topic is not None, "--from-beginning": from_beginning, "--since": since > 0}
            if given := [flag for flag, used in (topic_flags | {"--summary": summary}).items() if used]:
                raise CommandLineError(f"{given[0]} reads a topic; --compare reads the workers' /metrics")
            urls = compared_workers(workers, every)
    if compare:
        await compare_models(urls, every_s=every or COMPARE_EVERY_S, count=count, seconds=seconds)
        return
    topic = topic or config.pipelines[0].output_topic
    with exit_on_operator_error("watch"):
        conn = connection(config)
        await check_broker(conn)
        partitions = await partitions_of(conn, topic)
        if not partitions:
            ours = ", ".join(t for p in config.pipelines for t in (p.output_topic, p.dead_letter_topic))
            raise TopicMissingError(
                f"topic {topic!r} does not exist on {config.bootstrap_servers}: check --topic "
                f"(this config's outputs and dead letters: {ours})"
            )
    # read_committed: a worker with delivery = "exactly_once" writes in transactions, and only
    # committed ones are its outputs (an aborted one is scored again, by it or another worker).
    consumer = make_consumer(conn, isolation_level="read_committed")
    values = WireValues(config.app.schema_registry)
    await start_consumer(consumer)
    try:
        tail = Tail(consumer, [Partition(topic, p) for p in partitions])
        since_ms = int((time.time() - since) * 1000) if since > 0 else None
        await tail.seek(from_beginning=from_beginning, since_ms=since_ms)
        if not summary:
            print(f"{'id':<18} {'score':>8}  model  source  latency  (from {topic})", flush=True)
        seen = 0
        timings: list[tuple[int, int]] = []
        deadline = time.monotonic() + seconds if seconds > 0 else None
        while (not count or seen < count) and (deadline is None or time.monotonic() < deadline):
            room = count - seen if count else None
            for record in await tail.next_batch(room, timeout_ms=200, reread_room=room or 500):
                if type(record) is UndecodableRecord:
                    print(f"UNDECODABLE {record.topic}[{record.partition}]@{record.offset}: {record.reason}")
                    seen += 1
                    continue
                body, unreadable = await values.as_json(record.value)  # Avro outputs as their JSON
                if unreadable is not None:
                    print(f"UNREADABLE {record.topic}[{record.partition}]@{record.offset}: {unreadable}", flush=True)
                elif summary:
                    timing = timing_of(body)
                    if timing is not None:  # a dead letter or anything else has no latency
                        timings.append(timing)
                else:
                    print(describe(body), flush=True)
                seen += 1
    finally:
        await stop_consumer(consumer)
        await values.close()
    if summary:
        print(summarise(topic, timings, budget_of(topic)))


def budget_of(topic: str) -> float | None:
    """The latency budget of the pipeline writing ``topic`` (None: not a pipeline's outputs)."""
    return next((p.latency_budget_ms for p in config.pipelines if p.output_topic == topic), None)


def summarise(topic: str, timings: list[tuple[int, int]], budget_ms: float | None) -> str:
    """Percentiles of the predictions' latencies, then what the tail is made of: in which seconds
    of the run (by event time) the slowest 1% arrived, and the p99 without the worst of them.
    A tail packed into one second is something that happened then (a process starting beside
    the worker, a rebalance); a tail spread over the run is a steady cost."""
    if not timings:
        return f"{topic}: no predictions"
    stamps = np.array([t for t, _ in timings], dtype=np.int64)
    latencies = np.array([latency for _, latency in timings], dtype=np.int64)
    p50, p99 = (int(x) for x in np.percentile(latencies, [50, 99], method="higher"))
    over = f"; {int((latencies > budget_ms).sum())} over the {budget_ms:g} ms budget" if budget_ms is not None else ""
    line = (
        f"{topic}: {len(timings)} predictions; latency measured by the worker (event time to scored): "
        f"p50 {p50} ms, p99 {p99} ms, max {int(latencies.max())} ms{over}"
    )
    if len(timings) < 100:
        return line
    slowest = len(timings) // 100
    second = (stamps - stamps.min()) // 1000
    tail_seconds = Counter(second[np.argsort(latencies, kind="stable")[-slowest:]].tolist())
    shown = tail_seconds.most_common(3)
    elsewhere = slowest - sum(n for _, n in shown)
    where = ", ".join(f"{s}-{s + 1} s: {n}" for s, n in shown) + (f", other seconds: {elsewhere}" if elsewhere else "")
    worst = shown[0][0]
    rest = latencies[second != worst]
    without = ""
    if rest.size:
        without = f"; without second {worst}-{worst + 1}, p99 {int(np.percentile(rest, 99, method='higher'))} ms"
    return f"{line}\nslowest 1% ({slowest}) by when they happened in the run: {where}{without}"


COMPARE_EVERY_S = 5.0


def compared_workers(workers: tuple[str, ...], every: float | None) -> tuple[str, ...]:
    """The workers ``--compare`` reads (like swap-model, this config's own by default), once the
    flags are checked."""
    if every is not None and not (math.isfinite(every) and every >= 0.1):
        raise CommandLineError(f"--every {every}: expected seconds >= 0.1")
    urls = workers or (f"http://{config.app.web_bind}:{config.app.web_port}",)
    if problem := next(filter(None, map(worker_problem, urls)), None):
        raise CommandLineError(problem)
    return urls


async def compare_models(workers: Sequence[str], *, every_s: float, count: int, seconds: float) -> None:
    """Print the models' evidence every ``every_s`` until ``count`` summaries or ``seconds`` (0: no
    limit); exits 1 when no worker answered the last time, so a script can tell."""
    deadline = time.monotonic() + seconds if seconds > 0 else None
    # On a terminal each summary replaces the last; piped, they follow each other.
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    before: Evidence | None = None
    before_at, shown = 0.0, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=min(5.0, max(every_s, 1.0)))) as session:
        while True:
            evidence, problems = await read_workers(session, workers)
            read_at = time.monotonic()
            answered = len(workers) - len(problems)
            header = f"{time.strftime('%H:%M:%S')}: {answered} of {len(workers)} worker(s) answered"
            lines = [header, *(f"  {problem}" for problem in problems)]
            if answered:
                lines += ["", render(evidence, before, read_at - before_at)]
            print(clear + "\n".join(lines) + ("" if clear else "\n"), flush=True)
            shown += 1
            if (count and shown >= count) or (deadline is not None and read_at + every_s > deadline):
                break
            before, before_at = evidence, read_at
            await asyncio.sleep(every_s)
    if not answered:
        raise SystemExit(1)
