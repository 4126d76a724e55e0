"""Backfill throughput against the real broker, for both demo models, as ratios to the two
ceilings measured in the same run: the model alone (in-memory tensors, best batch size) and
the transport alone (aiokafka ``getmany`` + decode of the same topic, nothing produced;
the median of three reads, since these shared machines vary from one minute to the next).

    docker/kafka-local start
    .venv/bin/python -m bench.backfill                       # 200,000 events per model
    .venv/bin/python -m bench.backfill --events 1000000

Each model: produce the events to a fresh topic, run `sluice backfill` (the real command,
as its own process) to a Kafka topic, and time it by its own summary line. Results go to
bench/results/backfill.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.build import settle_garbage_collector
from app.config.pipeline_toml import write_pipeline_config
from bench.ceilings import drop_topics, fetch_and_decode, model_alone
from bench.latency import BOOTSTRAP, PARTITIONS, RESULTS, ROOT, create_topics, events, produce
from models.registry import DEMO_MODELS

SUMMARY = re.compile(r"backfill done: (\d+) events, (\d+) predictions, (\d+) dead-lettered, ([\d.]+)s")


def write_config(path: Path, model: str, topic: str) -> None:
    write_pipeline_config(
        path,
        bootstrap=BOOTSTRAP,
        pipeline="bench",
        app_id="bench-backfill",
        input_topic=topic,
        output_topic=f"{topic}-out",
        dead_letter_topic=f"{topic}-dlq",
        partitions=PARTITIONS,
        demo=model,
        torch_threads=0,  # torch's default, as the backfill figures were measured
        extra="max_batch_size = 512",
    )


async def prepare(model: str, count: int, workdir: Path) -> tuple[str, Path]:
    """A fresh topic holding ``count`` demo events, and a config whose pipeline reads it."""
    topic = f"bench-backfill-{model}-{int(time.time())}"
    await create_topics([topic])
    for start in range(0, count, 100_000):
        await produce(topic, events(min(100_000, count - start), seed=1_000 + start // 100_000))
    config = workdir / f"backfill-{model}.toml"
    write_config(config, model, topic)
    return topic, config


def backfill(config: Path, workdir: Path, parts: int = 1) -> dict[str, float]:
    """Run the real `sluice backfill`, as ``parts`` processes sharing one run (``--part K/N``);
    events and seconds by their own summary lines (seconds: the slowest process's)."""
    run_id = f"bench-{int(time.time())}-{parts}"
    command = [sys.executable, "-m", "app.cli", "--config", str(config), "backfill", "--run-id", run_id]
    processes = [
        subprocess.Popen(
            [*command, "--part", f"{k}/{parts}", "--state-dir", str(workdir / "state")],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(1, parts + 1)
    ]
    events, seconds = 0, 0.0
    for process in processes:
        _, stderr = process.communicate(timeout=3_600)
        found = SUMMARY.search(stderr)
        if process.returncode != 0 or not found:
            raise RuntimeError(f"backfill failed ({process.returncode}): {stderr[-2000:]}")
        events += int(found.group(1))
        seconds = max(seconds, float(found.group(4)))
    return {"events": events, "seconds": seconds, "per_s": events / seconds, "processes": parts}


async def run(models: list[str], count: int, workdir: Path) -> dict[str, object]:
    results: dict[str, object] = {"events": count, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    for model in models:
        topic, config = await prepare(model, count, workdir)
        try:
            ceiling = model_alone(model, threads=torch.get_num_threads())
            settle_garbage_collector()  # as `sluice backfill` does, so the ceiling gets the same help
            reads = [await fetch_and_decode(BOOTSTRAP, model, topic, min(count, 300_000)) for _ in range(3)]
            transport = statistics.median(reads)
            measured = await asyncio.to_thread(backfill, config, workdir)
            # One process per core, as the README suggests for a faster backfill (a bonus, not the ratio).
            split = await asyncio.to_thread(backfill, config, workdir, 2)
        finally:
            await drop_topics(BOOTSTRAP, topic)  # the input, its outputs and dead letters
        lower = min(float(ceiling["best_per_s"]), transport)  # type: ignore[arg-type]
        entry: dict[str, object] = {
            "model_alone": ceiling,
            "transport_alone_per_s": transport,
            "transport_alone_runs_per_s": reads,
            "backfill": measured,
            "backfill_two_processes": split,
            "ratio_to_lower_ceiling": measured["per_s"] / lower,
        }
        results["models"][model] = entry  # type: ignore[index]
        print(
            f"{model}: backfill {measured['per_s']:,.0f}/s; model alone {ceiling['best_per_s']:,.0f}/s; "
            f"transport alone {transport:,.0f}/s (runs: {', '.join(f'{r:,.0f}' for r in reads)}); "
            f"{measured['per_s'] / lower:.2f} of the lower ceiling; two processes {split['per_s']:,.0f}/s",
            flush=True,
        )
    return results


def write_report(results: dict[str, object], out: Path) -> None:
    lines = [
        "# Backfill throughput",
        "",
        f"Run {results['started']}: {results['events']:,} events per model, `sluice backfill` to a Kafka topic, "
        "real broker on the same 2-core machine, torch's default threads. Transport alone: `getmany` + decode "
        "of the same topic, nothing produced (median of three reads). Reproduce: "
        f"`docker/kafka-local start && .venv/bin/python -m bench.backfill --events {results['events']}`.",
        "",
        "| model | backfill events/s | model alone (best batch) | transport alone | vs lower ceiling "
        "| two backfill processes (--part) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, e in results["models"].items():  # type: ignore[attr-defined]
        m = e["model_alone"]
        lines.append(
            f"| {model} | {e['backfill']['per_s']:,.0f} | {m['best_per_s']:,.0f} (batch {m['best_batch']}) | "
            f"{e['transport_alone_per_s']:,.0f} | {e['ratio_to_lower_ceiling']:.2f} | "
            f"{e['backfill_two_processes']['per_s']:,.0f} |"
        )
    (out / "backfill.md").write_text("\n".join(lines) + "\n")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEMO_MODELS))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = args.out / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    # The same event loop as the `sluice` command the backfill runs under, so the ceiling is comparable.
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        results = runner.run(run(args.models.split(","), args.events, workdir))
    (args.out / "backfill.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print(f"results: {args.out / 'backfill.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
