"""Live scoring benchmark against the real broker: sluice's adaptive batcher vs what a Faust
user writes first (one event at a time; fixed-size ``take()``) and vs a Quix Streams
application (one event at a time; batches through its Sink API), for both demo models, with
the two ceilings measured in the same run.

    docker/kafka-local start
    .venv/bin/pip install -e ".[bench]"                    # matplotlib, quixstreams
    .venv/bin/python -m bench.latency                      # both models, every strategy: the long run
    .venv/bin/python -m bench.latency --models fraud-mlp --seconds 8
    .venv/bin/python -m bench.latency --drain-only --drain-seconds 3 --out /tmp/bench  # a quick check

For each model and strategy: saturation (drain rate of a backlog sized to last at least
``--drain-seconds`` at the strategy's own rate, timed from its first output to its last:
see ``saturation``), then open-loop loads at fractions of the adaptive worker's saturation
rate, the same absolute rates for every strategy (``--drain-only``: the drain alone; the Quix peers
then stop on their own once they have scored the backlog). Every run's topics are deleted
at its end (``--keep-topics`` keeps them). End-to-end latency is measured by the broker's
clocks: input CreateTime (set when the load generator sends) to the output's append time
(output topics use message.timestamp.type=LogAppendTime). Results go to
bench/results/latency.{md,json,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.config.pipeline_toml import DEMO_STATE, write_pipeline_config
from app.demo_events import demo_events
from bench.ceilings import drop_topics, model_alone, read_ceilings, transport_alone
from bench.cpu_accounting import process_ticks
from models.registry import DEMO_MODELS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BOOTSTRAP = os.environ.get("SLUICE_BENCH_BOOTSTRAP", "127.0.0.1:9092")
PARTITIONS = 2
BUDGET_MS = 50
# Drains are sized by time, not by a fixed count: every strategy's drain lasts at least
# DRAIN_SECONDS at its own rate, from its first output to its last. A first drain of
# FIRST_BACKLOG events gives the rate (and is the measurement if it already lasts that long);
# the next is sized to rate x DRAIN_SECONDS x DRAIN_MARGIN events, up to MAX_BACKLOG (about
# 550 MB of input and 15 s to generate: it bounds a run's disk, memory and time).
DRAIN_SECONDS = 10.0
DRAIN_MARGIN = 1.25
FIRST_BACKLOG = {"fraud-mlp": 20_000, "fraud-transformer": 5_000}
MAX_BACKLOG = 1_500_000
STRATEGIES = ("adaptive", "minimal", "take", "per-event", "quix", "quix-sink")
FAUST_MODES = {"take": "take", "per-event": "per_event"}
QUIX_MODES = {"quix": "per_event", "quix-sink": "sink"}


@dataclass
class LoadPoint:
    model: str
    strategy: str
    fraction: float
    offered_per_s: float
    achieved_per_s: float
    completed: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    saturated: bool
    # CPU per offered event (/proc, user + system), from the first event sent to the last output read:
    worker_cpu_us: float = 0.0  # the worker's, every thread
    generator_cpu_us: float = 0.0  # this process's: the load generator (and the reader of the outputs)


def events(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    return [(e.key, e.value) for e in demo_events(count, seed=seed)]


def ids_of(items: list[tuple[bytes, bytes]]) -> set[str]:
    return {orjson.loads(value)["id"] for _, value in items}


async def create_topics(names: list[str], *, log_append: bool = False) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        configs = {"message.timestamp.type": "LogAppendTime"} if log_append else {}
        await admin.create_topics([NewTopic(n, PARTITIONS, 1, topic_configs=configs) for n in names])
    finally:
        await admin.close()


async def produce(topic: str, items: list[tuple[bytes, bytes]], rate: float = 0.0) -> float:
    """Send ``items``; at ``rate`` events/s open loop if given. Returns the achieved send rate.

    The generator shares the machine with the broker and the worker, so it must cost as
    little as possible: records go out in hand-built batches (``send_batch``), spread over
    the partitions, each stamped (CreateTime) when it is appended, i.e. when it is due.
    """
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks=1, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        pending: list[asyncio.Future[object]] = []
        started = time.monotonic()
        sent = 0
        while sent < len(items):
            # Open loop: everything due by now goes out, whatever the worker does.
            due = len(items) if not rate else min(len(items), int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                upto = min(due, sent + 2_000)
                for partition in range(PARTITIONS):
                    batch = producer.create_batch()
                    for key, value in items[sent + partition : upto : PARTITIONS]:
                        batch.append(key=key, value=value, timestamp=None)
                    batch.close()
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                sent = upto
            if len(pending) > 200 or sent == len(items):
                await asyncio.gather(*pending)
                pending.clear()
            if rate and sent < len(items):
                await asyncio.sleep(max(0.0005, started + sent / rate - time.monotonic()))
        elapsed = time.monotonic() - started
        return len(items) / elapsed if elapsed > 0 else float("inf")
    finally:
        await producer.stop()


async def read_outputs(
    topic: str, wanted: set[str], timeout_s: float, *, start: dict[int, int] | None = None
) -> dict[str, tuple[int, int]]:
    """id -> (input timestamp, output append time) of the outputs for ``wanted`` ids, waiting for
    all; read from ``start`` (partition -> offset, from ``end_offsets``) or from the beginning."""
    # read_committed: with delivery = "exactly_once" only committed transactions are outputs
    # (the same as read_uncommitted for an at-least-once worker, which writes no transactions).
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        if start is None:
            await consumer.seek_to_beginning(*tps)
        else:
            for tp in tps:
                consumer.seek(tp, start[tp.partition])
        seen: dict[str, tuple[int, int]] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < len(wanted) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                for r in records:
                    body = orjson.loads(r.value)
                    if body["id"] in wanted:
                        seen.setdefault(body["id"], (body["event_ts"], r.timestamp))
        return seen
    finally:
        await consumer.stop()


async def end_offsets(topic: str) -> dict[int, int]:
    """Partition -> end offset of ``topic``: where a phase's outputs will start, so that reading
    them does not decode a drain's (up to MAX_BACKLOG) again while the worker still runs."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def wait_for_outputs(
    topic: str, count: int, timeout_s: float, worker: subprocess.Popen[bytes] | None = None
) -> float:
    """Until ``topic`` holds at least ``count`` records, asking only for its end offsets, or
    ``worker`` (a process, if the outputs come from one) has stopped (a peer that could not
    start: its log says why). Returns the worker's CPU microseconds per output (``/proc``)
    from the first poll that saw outputs to the last: its start-up is not in it (0.0 without
    a worker)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
    await consumer.start()
    first: tuple[int, float] | None = None
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (worker is None or worker.poll() is None):
            done = sum((await consumer.end_offsets(tps)).values())
            used = cpu_seconds(worker.pid) if worker is not None else 0.0
            if first is None and done:
                first = (done, used)
            if done >= count:
                return (used - first[1]) / (done - first[0]) * 1e6 if first and done > first[0] else 0.0
            await asyncio.sleep(0.25)
        return 0.0
    finally:
        await consumer.stop()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) process ``pid`` used so far, from ``/proc``; 0.0 without it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    return process_ticks(stat) / os.sysconf("SC_CLK_TCK")


def write_sluice_config(path: Path, model: str, topic_in: str, topic_out: str, *, more: str = "") -> None:
    """The benchmark's worker config; ``more``: lines added to its pipeline table (bench.shadow's shadow)."""
    write_pipeline_config(
        path,
        bootstrap=BOOTSTRAP,
        pipeline="bench",
        # The run's own app id: its state changelog is then the run's, deleted with its topics
        # (a fixed one was restored by every later run).
        app_id=f"{topic_in}-app",
        input_topic=topic_in,
        output_topic=topic_out,
        dead_letter_topic=f"{topic_in}-dlq",
        partitions=PARTITIONS,
        demo=model,
        app_extra="stats_interval_s = 5",
        extra=f"latency_budget_ms = {BUDGET_MS}\nmax_batch_size = 512\n{more}",
    )


def start_worker(
    strategy: str, model: str, topic_in: str, topic_out: str, workdir: Path, *, stop_after: int = 0
) -> subprocess.Popen[bytes]:
    """A worker of ``strategy`` on the topics; ``stop_after`` events (Quix peers only: they
    can stop on their own) or until ``stop_worker``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if strategy == "adaptive":
        config = workdir / f"{model}.toml"
        write_sluice_config(config, model, topic_in, topic_out)
        cmd = [
            sys.executable,
            "-m",
            "app.cli",
            "--config",
            str(config),
            "--datadir",
            str(workdir / "data"),
            "worker",
            "-l",
            "info",
            "--without-web",
        ]
    elif strategy == "minimal":
        env.update(peer_env(model, topic_in, topic_out))
        cmd = [sys.executable, "-m", "bench.minimal"]
    elif strategy in QUIX_MODES:
        # Its state directory is a temporary one that bench.quix_peers removes on exit.
        env.update(peer_env(model, topic_in, topic_out), BENCH_MODE=QUIX_MODES[strategy], BENCH_COUNT=str(stop_after))
        cmd = [sys.executable, "-m", "bench.quix_peers"]
    else:
        env.update(peer_env(model, topic_in, topic_out), BENCH_MODE=FAUST_MODES[strategy])
        cmd = [
            sys.executable,
            "-m",
            "faust",
            "-A",
            "bench.faust_peers",
            "--datadir",
            str(workdir / "data"),
            "--loop",
            "uvloop",
            "worker",
            "-l",
            "info",
            "--without-web",
        ]
    with (workdir / f"{model}-{strategy}.log").open("wb") as log:  # the worker has its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def peer_env(model: str, topic_in: str, topic_out: str) -> dict[str, str]:
    """What every peer reads (bench.peers.PeerSettings): the same model and topics, 1 torch thread."""
    return {
        "BENCH_MODEL": model,
        "BENCH_IN": topic_in,
        "BENCH_OUT": topic_out,
        "BENCH_BROKER": BOOTSTRAP,
        "BENCH_APP_ID": f"{topic_in}-app",
        "BENCH_PARTITIONS": str(PARTITIONS),
        "BENCH_TORCH_THREADS": "1",
    }


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def drain_rate(appended_ms: Iterable[int]) -> tuple[float, float]:
    """A drain's (outputs per second, seconds) by its outputs' append times: outputs / (time of
    the last output - time of the first). Worker start-up, before the first output, is not in it."""
    times = list(appended_ms)
    span_s = (max(times) - min(times)) / 1000 if times else 0.0
    if span_s == 0:
        return (float("inf") if times else 0.0), 0.0
    return len(times) / span_s, span_s


def next_backlog(count: int, rate: float, span_s: float, *, seconds: float, cap: int) -> int | None:
    """The next drain's backlog after one of ``count`` events that ran ``span_s`` at ``rate``;
    None when that drain lasted ``seconds`` or was already ``cap`` events. At least double
    ``count``: a short drain's rate is low (its batcher was still adapting), so it converges."""
    if span_s >= seconds or count >= cap:
        return None
    return int(min(cap, max(2 * count, rate * seconds * DRAIN_MARGIN)))


def output_rate(outputs: dict[str, tuple[int, int]], skip: float = 0.05) -> float:
    """Outputs per second by their append times, the first ``skip`` (start-up, ramp) not counted."""
    appended = np.array(sorted(t for _, t in outputs.values()), dtype=np.float64)
    start = int(skip * len(appended))
    span_s = (appended[-1] - appended[start]) / 1000 if len(appended) > start + 1 else 0.0
    return (len(appended) - start - 1) / span_s if span_s > 0 else 0.0


@dataclass
class Drain:
    """A backlog drained by a fresh worker, which keeps running on its topics."""

    backlog: int
    read_back: int  # outputs of the backlog read back (all, unless the worker failed or stalled)
    per_s: float
    seconds: float  # from the first output to the last
    topic_in: str
    topic_out: str
    worker: subprocess.Popen[bytes]
    cpu_us_per_event: float = 0.0  # the worker's CPU (every thread) per output while it drained


async def drain(model: str, strategy: str, workdir: Path, *, tag: str, count: int, drain_only: bool) -> Drain:
    """A worker started on a backlog of ``count`` events produced beforehand on topics
    ``{tag}-{count}-*`` (it has the CPUs with the broker: its outputs are read, and decoded,
    here once all are in)."""
    topic_in, topic_out = f"{tag}-{count}-in", f"{tag}-{count}-out"
    await create_topics([topic_in])
    await create_topics([topic_out], log_append=True)
    backlog = events(count, seed=1)
    await produce(topic_in, backlog)
    stop_after = count if drain_only and strategy in QUIX_MODES else 0
    worker = start_worker(strategy, model, topic_in, topic_out, workdir, stop_after=stop_after)
    cpu_us = await wait_for_outputs(topic_out, count, timeout_s=300, worker=worker)
    outputs = await read_outputs(topic_out, ids_of(backlog), timeout_s=300 if worker.poll() is None else 60)
    rate, span_s = drain_rate(t for _, t in outputs.values())
    print(
        f"  {model:18s} {strategy:10s} drains a backlog of {count:,} at {rate:,.0f}/s "
        f"in {span_s:.1f} s ({len(outputs):,} of its outputs read back; {cpu_us:.1f} CPU µs/event)",
        flush=True,
    )
    if stop_after:
        print(f"  {model:18s} {strategy:10s} {own_report(worker, workdir / f'{model}-{strategy}.log')}")
    return Drain(count, len(outputs), rate, span_s, topic_in, topic_out, worker, cpu_us)


async def drain_and_stop(model: str, strategy: str, workdir: Path, *, tag: str, count: int) -> Drain:
    """``drain`` (drain-only), then the worker stopped and the drain's topics deleted, whatever
    happened; raises with the end of the worker's log if it scored fewer than ``count`` events."""
    try:
        drained = await drain(model, strategy, workdir, tag=tag, count=count, drain_only=True)
        stop_worker(drained.worker)
    finally:
        await drop_topics(BOOTSTRAP, f"{tag}-")
    if drained.read_back < count:
        tail = log_tail(workdir / f"{model}-{strategy}.log")
        raise RuntimeError(f"{model} {strategy} scored {drained.read_back:,} of {count:,}:\n{tail}")
    return drained


def log_tail(log: Path) -> str:
    """The end of a worker's log, for an error that says why it failed."""
    return log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"


async def outputs_on(topic: str) -> int:
    """Records on ``topic`` so far (the sum of its end offsets)."""
    return sum((await end_offsets(topic)).values())


async def saturation(
    model: str,
    strategy: str,
    workdir: Path,
    seconds: float,
    *,
    tag: str,
    first_backlog: int,
    drain_seconds: float,
    max_backlog: int,
    drain_only: bool = False,
) -> tuple[Drain, float]:
    """Two saturation rates, and the running worker for the loads:

    - drain: how fast it works off a backlog produced beforehand, sized by its own rate:
      drains of ``first_backlog`` events, then of the previous drain's rate x ``drain_seconds``
      (x DRAIN_MARGIN), until one lasts ``drain_seconds`` from its first output or holds
      ``max_backlog`` events, each by a fresh worker;
    - under load: how many outputs per second it achieves while the load generator offers
      more than it can take (1.5x the drain rate), sharing the CPUs as in the load points
      (not measured, 0.0, with ``drain_only``).
    """
    done = await drain(model, strategy, workdir, tag=tag, count=first_backlog, drain_only=drain_only)
    while done.read_back == done.backlog and (
        count := next_backlog(done.backlog, done.per_s, done.seconds, seconds=drain_seconds, cap=max_backlog)
    ):
        stop_worker(done.worker)  # too short to count; its topics are deleted with the run's
        done = await drain(model, strategy, workdir, tag=tag, count=count, drain_only=drain_only)
    if drain_only:
        return done, 0.0
    overload = events(int(1.5 * done.per_s * seconds), seed=2)
    start = await end_offsets(done.topic_out)
    await produce(done.topic_in, overload, rate=1.5 * done.per_s)
    outputs = await read_outputs(done.topic_out, ids_of(overload), timeout_s=seconds * 4, start=start)
    loaded = output_rate(outputs, skip=0.2)
    print(
        f"  {model:18s} {strategy:10s} saturation: drains a backlog at {done.per_s:,.0f}/s, "
        f"{loaded:,.0f}/s under an open-loop overload",
        flush=True,
    )
    return done, loaded


def own_report(worker: subprocess.Popen[bytes], log: Path, timeout_s: float = 60.0) -> str:
    """Wait for a worker that stops on its own (its outputs are all in: nothing else runs
    meanwhile); its own figure, the ``quix drain:`` line of its log."""
    try:
        worker.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"did not stop on its own within {timeout_s:.0f} s"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("quix drain:")]
    return f"stopped on its own (exit {worker.returncode}); {lines[-1] if lines else 'no figure in its log'}"


async def load_point(
    model: str,
    strategy: str,
    fraction: float,
    rate: float,
    topic_in: str,
    topic_out: str,
    seconds: float,
    seed: int,
    worker_pid: int | None = None,
) -> LoadPoint:
    warm_up_s = min(3.0, seconds / 4)
    count = max(20, int(rate * seconds))
    items = events(count, seed=seed)
    start = await end_offsets(topic_out)
    worker_cpu, own_cpu = cpu_seconds(worker_pid) if worker_pid else 0.0, time.process_time()
    achieved = await produce(topic_in, items, rate=rate)
    ours = await read_outputs(topic_out, ids_of(items), timeout_s=max(30.0, seconds * 3), start=start)
    worker_cpu = (cpu_seconds(worker_pid) - worker_cpu) / count * 1e6 if worker_pid else 0.0
    own_cpu = (time.process_time() - own_cpu) / count * 1e6
    stamps = sorted(ours.values())
    first_ts = stamps[0][0] if stamps else 0
    latencies = np.array([out - inp for inp, out in stamps if inp >= first_ts + warm_up_s * 1000], dtype=np.float64)
    if latencies.size == 0:
        latencies = np.array([np.nan])
    completed = len(ours) / count
    p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    saturated = achieved < 0.95 * rate or completed < 0.999 or p50 > 20 * BUDGET_MS
    point = LoadPoint(
        model,
        strategy,
        fraction,
        float(rate),
        float(achieved),
        float(completed),
        float(p50),
        float(p99),
        float(p999),
        bool(saturated),
        float(worker_cpu),
        float(own_cpu),
    )
    flag = "  SATURATED" if saturated else ""
    print(
        f"  {model:18s} {strategy:10s} {fraction:>4.0%} of saturation ({rate:,.0f}/s): "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, p99.9 {p999:.1f} ms, {completed:.1%} scored, "
        f"CPU µs/event: worker {worker_cpu:.1f}, generator {own_cpu:.1f}{flag}",
        flush=True,
    )
    return point


async def run(
    models: list[str],
    fractions: list[float],
    seconds: float,
    workdir: Path,
    strategies: list[str],
    *,
    first_backlog: int = 0,
    drain_seconds: float = DRAIN_SECONDS,
    max_backlog: int = MAX_BACKLOG,
    drain_only: bool = False,
    prefix: str = "bench",
    keep_topics: bool = False,
) -> dict[str, object]:
    results: dict[str, object] = {
        "models": {},
        "budget_ms": BUDGET_MS,
        "partitions": PARTITIONS,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "strategies": strategies,
        "drain_only": drain_only,
        "drain_rule": {"min_seconds": drain_seconds, "margin": DRAIN_MARGIN, "max_backlog": max_backlog},
    }
    for model in models:
        print(f"{model}: ceilings", flush=True)
        model_ceiling = model_alone(model, threads=1)
        # Passes over 100,000 events (a second or two each), as long as a drain in all.
        transport = await transport_alone(BOOTSTRAP, model, 100_000, min_seconds=drain_seconds, prefix=prefix)
        print(
            f"  model alone {model_ceiling['best_per_s']:,.0f}/s at batch {model_ceiling['best_batch']}; "
            f"transport alone {transport:,.0f}/s",
            flush=True,
        )
        entry: dict[str, object] = {
            "model_alone": model_ceiling,
            "transport_alone_per_s": transport,
            "saturation_per_s": {},
            "drain_per_s": {},
            "drain_backlog": {},
            "drain_seconds": {},
            "drain_cpu_us_per_event": {},
            "points": [],
        }
        reference = 0.0
        runnable = strategies
        if model in DEMO_STATE:
            # Its history is per-key state: Quix's State, a Faust Table in the per-event agent (bench.faust_peers).
            if "take" in strategies:
                runnable = [s for s in strategies if s != "take"]
                print(f"  {model}: Faust take() skipped (its per-key history is a Table only per event)", flush=True)
            entry["note"] = (
                "The model reads each account's history, kept per key: in sluice's state, in Quix's `State`, "
                "in a Faust `Table` (the one-at-a-time agent; the `take()` agent cannot keep one: see "
                "`bench/faust_peers.py`, so it is not run)."
            )
        for strategy in runnable:
            tag = f"{prefix}-{model}-{strategy}-{int(time.time())}"
            done, rate = await saturation(
                model,
                strategy,
                workdir,
                seconds,
                tag=tag,
                first_backlog=first_backlog or FIRST_BACKLOG[model],
                drain_seconds=drain_seconds,
                max_backlog=max_backlog,
                drain_only=drain_only,
            )
            drain, topic_in, topic_out, worker = done.per_s, done.topic_in, done.topic_out, done.worker
            entry["drain_per_s"][strategy] = drain  # type: ignore[index]
            entry["drain_backlog"][strategy] = done.backlog  # type: ignore[index]
            entry["drain_seconds"][strategy] = done.seconds  # type: ignore[index]
            entry["drain_cpu_us_per_event"][strategy] = done.cpu_us_per_event  # type: ignore[index]
            if strategy == "adaptive":
                # The same backlog, read again (as long as a drain) by the ceilings that owe nothing to sluice's code.
                reads = await read_ceilings(BOOTSTRAP, model, topic_in, done.backlog, min_seconds=drain_seconds)
                entry["read_ceilings_per_s"] = reads
                print(
                    f"  getmany alone {reads['getmany']:,.0f}/s; getmany + orjson + np.array "
                    f"{reads['getmany_orjson']:,.0f}/s (sluice's drain: {drain / reads['getmany_orjson']:.2f} of it)",
                    flush=True,
                )
            try:
                if not drain_only:
                    entry["saturation_per_s"][strategy] = rate  # type: ignore[index]
                    reference = reference or rate
                    for i, fraction in enumerate(fractions):
                        point = await load_point(
                            model,
                            strategy,
                            fraction,
                            fraction * reference,
                            topic_in,
                            topic_out,
                            seconds,
                            seed=100 + i,
                            worker_pid=worker.pid,
                        )
                        entry["points"].append(asdict(point))  # type: ignore[attr-defined]
            finally:
                stop_worker(worker)
                if not keep_topics:
                    await drop_topics(BOOTSTRAP, f"{tag}-")
        results["models"][model] = entry  # type: ignore[index]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEMO_MODELS))
    parser.add_argument("--fractions", default="0.05,0.4,0.7")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per load point (warm-up included)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help="adaptive first: it sets the loads and the ratios"
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=DRAIN_SECONDS,
        help="each drain lasts at least this long at its strategy's own rate, first output to last",
    )
    parser.add_argument(
        "--first-backlog", type=int, default=0, help="events in each strategy's first drain (default: per model)"
    )
    parser.add_argument("--max-backlog", type=int, default=MAX_BACKLOG, help="no drain's backlog is larger")
    parser.add_argument("--drain-only", action="store_true", help="measure the drains only: no overload, no loads")
    parser.add_argument("--prefix", default="bench", help="prefix of the run's topic names")
    parser.add_argument("--keep-topics", action="store_true", help="keep the run's topics (deleted by default)")
    args = parser.parse_args()
    unknown = set(args.strategies.split(",")) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; known: {', '.join(STRATEGIES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "tmp"
    workdir.mkdir(exist_ok=True)
    results = asyncio.run(
        run(
            args.models.split(","),
            [float(f) for f in args.fractions.split(",")],
            args.seconds,
            workdir,
            args.strategies.split(","),
            first_backlog=args.first_backlog,
            drain_seconds=args.drain_seconds,
            max_backlog=args.max_backlog,
            drain_only=args.drain_only,
            prefix=args.prefix,
            keep_topics=args.keep_topics,
        )
    )
    (args.out / "latency.json").write_text(json.dumps(results, indent=2) + "\n")
    from bench.report import write_latency_report

    write_latency_report(results, args.out)
    print(f"results: {args.out / 'latency.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
