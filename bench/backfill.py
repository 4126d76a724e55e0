"""Backfill throughput against the real broker, for both demo models, as ratios to the two
ceilings measured in the same run (the model alone; the transport alone).

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
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.ceilings import model_alone, transport_alone
from bench.latency import BOOTSTRAP, INPUTS, PARTITIONS, RESULTS, ROOT, create_topics, events, produce
from models.registry import DEMO_MODELS

SUMMARY = re.compile(r"backfill done: (\d+) events, (\d+) predictions, (\d+) dead-lettered, ([\d.]+)s")


def write_config(path: Path, model: str, topic: str) -> None:
    path.write_text(
        f"""[app]
id = "bench-backfill"
broker = "kafka://{BOOTSTRAP}"
topic_partitions = {PARTITIONS}

[pipelines.bench]
input_topics = ["{topic}"]
output_topic = "{topic}-out"
dead_letter_topic = "{topic}-dlq"
max_batch_size = 512

[pipelines.bench.model]
demo = "{model}"

[pipelines.bench.features]
inputs = {INPUTS[model]}
"""
    )


async def measure(model: str, count: int, workdir: Path) -> dict[str, object]:
    topic = f"bench-backfill-{model}-{int(time.time())}"
    await create_topics([topic])
    for start in range(0, count, 100_000):
        await produce(topic, events(min(100_000, count - start), seed=1_000 + start // 100_000))
    config = workdir / f"backfill-{model}.toml"
    write_config(config, model, topic)
    result = subprocess.run(  # noqa: ASYNC221 - the real command, as its own process; nothing else runs meanwhile
        [sys.executable, "-m", "app.cli", "--config", str(config), "backfill", "--state-dir", str(workdir / "state")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3_600,
    )
    found = SUMMARY.search(result.stderr)
    if result.returncode != 0 or not found:
        raise RuntimeError(f"backfill failed ({result.returncode}): {result.stderr[-2000:]}")
    done, seconds = int(found.group(1)), float(found.group(4))
    return {"events": done, "seconds": seconds, "per_s": done / seconds}


async def run(models: list[str], count: int, workdir: Path) -> dict[str, object]:
    results: dict[str, object] = {"events": count, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    for model in models:
        ceiling = model_alone(model, threads=torch.get_num_threads())
        transport = await transport_alone(BOOTSTRAP, model, min(count, 200_000))
        backfill = await measure(model, count, workdir)
        lower = min(ceiling["best_per_s"], transport)  # type: ignore[type-var]
        entry = {
            "model_alone": ceiling,
            "transport_alone_per_s": transport,
            "backfill": backfill,
            "ratio_to_lower_ceiling": backfill["per_s"] / lower,
        }  # type: ignore[operator]
        results["models"][model] = entry  # type: ignore[index]
        print(
            f"{model}: backfill {backfill['per_s']:,.0f}/s; model alone {ceiling['best_per_s']:,.0f}/s; "
            f"transport alone {transport:,.0f}/s; {entry['ratio_to_lower_ceiling']:.2f} of the lower ceiling",
            flush=True,
        )
    return results


def write_report(results: dict[str, object], out: Path) -> None:
    lines = [
        "# Backfill throughput",
        "",
        f"Run {results['started']}: {results['events']:,} events per model, `sluice backfill` to a Kafka topic, "
        "real broker on the same 2-core machine, torch's default threads. Reproduce: "
        f"`docker/kafka-local start && .venv/bin/python -m bench.backfill --events {results['events']}`.",
        "",
        "| model | backfill events/s | model alone (best batch) | transport alone | vs lower ceiling |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for model, e in results["models"].items():  # type: ignore[attr-defined]
        m = e["model_alone"]
        lines.append(
            f"| {model} | {e['backfill']['per_s']:,.0f} | {m['best_per_s']:,.0f} (batch {m['best_batch']}) | "
            f"{e['transport_alone_per_s']:,.0f} | {e['ratio_to_lower_ceiling']:.2f} |"
        )
    (out / "backfill.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEMO_MODELS))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = args.out / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run(args.models.split(","), args.events, workdir))
    (args.out / "backfill.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print(f"results: {args.out / 'backfill.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
