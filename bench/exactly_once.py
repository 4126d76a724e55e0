"""What exactly-once costs: the live worker with ``delivery = "at_least_once"`` and with
``"exactly_once"`` at a few transaction intervals, on the same events, in one run.

    docker/kafka-local start
    .venv/bin/python -m bench.exactly_once                         # MLP, 20,000-event backlog, 2 intervals
    .venv/bin/python -m bench.exactly_once --intervals 100,1000 --rates 1500,6000 --seconds 8

For each setting: the drain rate of a backlog produced beforehand (outputs read with
``read_committed``, rate by their append times), then p50/p99 latency at each open-loop offered
rate (the same rates for every setting), from the input's CreateTime to the moment a
``read_committed`` consumer on this machine receives the output: an exactly-once output is
appended at once but visible only when its transaction commits, so the broker's append time
would hide the interval. ``--rounds`` repeats
the settings in turn (the machine may be shared). Results go to
bench/results/exactly_once.{md,json}; the run's topics (prefix ``--prefix``) are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.config.pipeline_toml import write_pipeline_config
from bench.ceilings import drop_topics
from bench.latency import (
    BOOTSTRAP,
    BUDGET_MS,
    PARTITIONS,
    RESULTS,
    ROOT,
    create_topics,
    events,
    ids_of,
    output_rate,
    produce,
    read_outputs,
    stop_worker,
)


def start_worker(tag: str, model: str, delivery: str, workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / f"{tag}.toml"
    write_pipeline_config(
        config,
        bootstrap=BOOTSTRAP,
        pipeline="bench",
        app_id=f"{tag}-app",
        input_topic=f"{tag}-in",
        output_topic=f"{tag}-out",
        dead_letter_topic=f"{tag}-dlq",
        partitions=PARTITIONS,
        demo=model,
        app_extra="stats_interval_s = 5",
        extra=f"latency_budget_ms = {BUDGET_MS}\nmax_batch_size = 512\n{delivery}",
    )
    cmd = [sys.executable, "-m", "app.cli", "--config", str(config), "--datadir", str(workdir / f"{tag}-data")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (workdir / f"{tag}.log").open("wb") as log:  # the worker has its own copy of the descriptor
        return subprocess.Popen(
            [*cmd, "worker", "-l", "info", "--without-web"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def visible_latency(topic_in: str, topic_out: str, rate: float, seconds: float) -> tuple[float, float]:
    """p50 and p99 ms from each input's CreateTime to a read_committed consumer receiving its output."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    tps = [TopicPartition(topic_out, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    items = events(int(rate * seconds), seed=7 + int(rate))  # ids of their own at each rate
    wanted, latencies = ids_of(items), list[float]()

    async def receive() -> None:
        while len(latencies) < len(wanted):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time() * 1000
                for r in records:
                    body = orjson.loads(r.value)
                    if body["id"] in wanted:
                        latencies.append(now - body["event_ts"])

    receiving = asyncio.create_task(receive())
    try:
        await produce(topic_in, items, rate=rate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(receiving), 30)
    finally:
        receiving.cancel()
        await consumer.stop()
    warm = latencies[len(latencies) // 5 :] or [float("nan")]  # the first fifth: warm-up
    p50, p99 = np.percentile(np.array(warm), [50, 99])
    return float(p50), float(p99)


async def measure(
    label: str,
    delivery: str,
    *,
    model: str,
    backlog: int,
    rates: list[float],
    seconds: float,
    workdir: Path,
    prefix: str,
) -> dict[str, object]:
    tag = f"{prefix}-{label}-{int(time.time())}"
    await create_topics([f"{tag}-in"])
    await create_topics([f"{tag}-out"], log_append=True)
    items = events(backlog, seed=1)
    await produce(f"{tag}-in", items)
    worker = start_worker(tag, model, delivery, workdir)
    latencies: dict[str, tuple[float, float]] = {}
    try:
        drain = output_rate(await read_outputs(f"{tag}-out", ids_of(items), timeout_s=300))
        print(f"  {label:24s} drains a backlog of {backlog:,} at {drain:,.0f}/s", flush=True)
        for rate in rates:
            p50, p99 = await visible_latency(f"{tag}-in", f"{tag}-out", rate, seconds)
            latencies[f"{rate:.0f}"] = (p50, p99)
            print(f"  {label:24s} at {rate:,.0f}/s: p50 {p50:.0f} ms, p99 {p99:.0f} ms until visible", flush=True)
    finally:
        stop_worker(worker)
        await drop_topics(BOOTSTRAP, f"{tag}-")
    return {"label": label, "drain_per_s": drain, "latency_ms": latencies}


def report(results: dict[str, object]) -> str:
    rows = results["settings"]
    rates = results["rates"]
    assert isinstance(rows, list) and isinstance(rates, list)
    base = 1.0
    lines = [
        f"# Exactly-once vs at-least-once ({results['model']}, {results['started']}, {results['cpus']} CPUs)",
        "",
        f"`python -m bench.exactly_once --backlog {results['backlog']} --rates {','.join(f'{r:.0f}' for r in rates)} "
        f"--seconds {results['seconds']:.0f} --intervals {results['intervals']} --rounds {results['rounds']}`; "
        "one run; outputs read with read_committed; latency from the input's CreateTime until a read_committed "
        "reader on this machine receives the output (p50 / p99 ms, the first fifth of each point left out as warm-up).",
        "",
        "| round | delivery | backlog drain (events/s) | vs at-least-once | "
        + " | ".join(f"at {r:,.0f}/s" for r in rates)
        + " |",
        "| ---: | --- | ---: | ---: |" + " ---: |" * len(rates),
    ]
    for row in rows:
        if row["label"] == "at_least_once":
            base = row["drain_per_s"] or 1.0
        points = " | ".join("{:.0f} / {:.0f}".format(*row["latency_ms"][f"{r:.0f}"]) for r in rates)
        lines.append(
            f"| {row['round']} | {row['label']} | {row['drain_per_s']:,.0f} | {row['drain_per_s'] / base:.2f}x "
            f"| {points} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fraud-mlp")
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--rates", default="1500,6000", help="offered events/s of the latency points")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of the latency point")
    parser.add_argument("--intervals", default="100,1000", help="transaction_interval_ms values to measure")
    parser.add_argument("--rounds", type=int, default=1, help="run every setting this many times, in turn")
    parser.add_argument("--prefix", default="bench-eos")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = args.out / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    settings = [("at_least_once", "")] + [
        (f"exactly_once {ms} ms", f'delivery = "exactly_once"\ntransaction_interval_ms = {ms}')
        for ms in args.intervals.split(",")
    ]
    results: dict[str, object] = {
        "model": args.model,
        "backlog": args.backlog,
        "rates": [float(r) for r in args.rates.split(",")],
        "seconds": args.seconds,
        "intervals": args.intervals,
        "rounds": args.rounds,
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "settings": [],
    }

    async def run() -> None:
        for round_ in range(1, args.rounds + 1):
            for label, delivery in settings:
                row = await measure(
                    label.replace(" ", "-"),
                    delivery,
                    model=args.model,
                    backlog=args.backlog,
                    rates=[float(r) for r in args.rates.split(",")],
                    seconds=args.seconds,
                    workdir=workdir,
                    prefix=args.prefix,
                )
                results["settings"].append({**row, "label": label, "round": round_})  # type: ignore[attr-defined]

    asyncio.run(run())
    (args.out / "exactly_once.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "exactly_once.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
