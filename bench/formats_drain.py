"""The live drain with events in each format, side by side in one run: JSON, Avro and Protobuf
(the schema registry's wire format), the same demo events, the same pipeline, the real broker.

    docker/kafka-local start
    .venv/bin/python -m bench.formats_drain                     # fraud-mlp; results to bench/results/formats_drain.md
    .venv/bin/python -m bench.formats_drain --models fraud-mlp fraud-transformer --seconds 10

A registry server does not install on these machines, so the schemas live in confluent-kafka's
in-memory registry (``mock://``), which only code in one process sees: each drain runs the
worker's own pipeline service (``app.pipeline_service.PipelineService``, what ``sluice worker``
runs per pipeline) in this process, for every format alike, so the formats are compared by the
same method. The events are produced beforehand (Avro and Protobuf with confluent-kafka's own
serializers, as a producer with a registry writes them); the rate is timed from the first output
to the last by their append times (output topics use LogAppendTime), so start-up is not in it.
A first drain of ``--first`` events gives each format's rate; the measured drain is sized to last
``--seconds`` at that rate (capped at ``--max``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from app.config import load_config
from app.decision_log import ensure_decisions_topic
from app.demo_formats import demo_writer
from app.kafka_clients import connection
from app.pipeline_service import PipelineService
from app.topics import ensure_changelog, ensure_topics
from bench.ceilings import drop_topics
from bench.latency import (
    BOOTSTRAP,
    PARTITIONS,
    RESULTS,
    create_topics,
    drain_rate,
    events,
    ids_of,
    produce,
    read_outputs,
    wait_for_outputs,
    write_sluice_config,
)

FORMATS = ("json", "avro", "protobuf")


async def encoded(
    config_path: Path, topic: str, fmt: str, items: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    write = await demo_writer(load_config(config_path), topic, fmt)
    return [(key, await write(value)) for key, value in items]


async def drain(model: str, fmt: str, count: int, tag: str, workdir: Path) -> tuple[float, float]:
    """(events/s, seconds) of one drain of ``count`` events in ``fmt`` by a fresh pipeline service."""
    run = f"{tag}-{fmt}-{uuid.uuid4().hex[:6]}"
    topic_in, topic_out = f"{run}-in", f"{run}-out"
    await create_topics([topic_in])
    await create_topics([topic_out], log_append=True)
    config_path = workdir / f"{run}.toml"
    more = f'format = "{fmt}"' if fmt != "json" else ""
    write_sluice_config(config_path, model, topic_in, topic_out, more=more)
    text = config_path.read_text().replace(
        "[pipelines.", f'[app.schema_registry]\nurl = "mock://{tag}"\n\n[pipelines.', 1
    )
    config_path.write_text(text)
    items = events(count, seed=11)
    await produce(topic_in, await encoded(config_path, topic_in, fmt, items))
    config = load_config(config_path)
    p = config.pipeline("bench")
    await ensure_topics(BOOTSTRAP, p.topics, create=True, partitions=PARTITIONS)
    await ensure_decisions_topic(connection(config), config.app.decisions_topic, create=True)
    if p.state is not None:  # the transformer's per-key history
        await ensure_changelog(BOOTSTRAP, p.changelog_topic, p.input_topics[0], create=True)
    service = PipelineService(config, p)
    await service.start()
    try:
        await wait_for_outputs(topic_out, count, timeout_s=max(120.0, count / 2_000))
    finally:
        await service.stop()
    outputs = await read_outputs(topic_out, ids_of(items), timeout_s=120)
    if len(outputs) < count:
        raise TimeoutError(f"{topic_out}: {len(outputs):,} of {count:,} outputs")
    return drain_rate(appended for _, appended in outputs.values())


async def run(models: list[str], seconds: float, first: int, most: int, rounds: int) -> dict[str, Any]:
    tag = f"bench-formats-{int(time.time())}"
    workdir = RESULTS / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now().isoformat(sep=" ", timespec="seconds"),
        "seconds": seconds,
        "rounds": rounds,
        "models": {},
    }
    try:
        for model in models:
            sizes = {}
            for fmt in FORMATS:
                rate, _ = await drain(model, fmt, first, tag, workdir)
                sizes[fmt] = int(min(most, max(first, rate * seconds)))
                print(f"{model} {fmt}: first drain {rate:,.0f}/s; measured drains of {sizes[fmt]:,}", flush=True)
            rates: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
            for round_ in range(rounds):  # interleaved: each format once per round
                for fmt in FORMATS:
                    rate, span = await drain(model, fmt, sizes[fmt], tag, workdir)
                    rates[fmt].append(rate)
                    print(f"  round {round_ + 1}: {fmt:8s} {rate:,.0f}/s over {span:.1f}s", flush=True)
            results["models"][model] = {
                fmt: {"events": sizes[fmt], "per_s": rates[fmt], "median_per_s": statistics.median(rates[fmt])}
                for fmt in FORMATS
            }
    finally:
        await drop_topics(BOOTSTRAP, tag)
    return results


def write_report(results: dict[str, Any], out: Path) -> None:
    lines = [
        "# The live drain by event format",
        "",
        f"Run {results['started']}: demo events produced beforehand, drained by the worker's pipeline service "
        f"in this process (the in-memory registry is one process's), {PARTITIONS} partitions; each drain sized "
        f"to last about {results['seconds']:.0f} s at its format's rate; {results['rounds']} interleaved rounds, "
        "median reported. Reproduce: `.venv/bin/python -m bench.formats_drain`.",
        "",
        "| model | format | events/s (median) | rounds | vs JSON |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for model, formats in results["models"].items():
        json_rate = formats["json"]["median_per_s"]
        for fmt, r in formats.items():
            each = ", ".join(f"{x:,.0f}" for x in r["per_s"])
            lines.append(
                f"| {model} | {fmt} | {r['median_per_s']:,.0f} | {each} | {r['median_per_s'] / json_rate:.2f} |"
            )
    (out / "formats_drain.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fraud-mlp"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--first", type=int, default=20_000)
    parser.add_argument("--max", type=int, default=1_200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = asyncio.run(run(args.models, args.seconds, args.first, args.max, args.rounds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "formats_drain.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.out)
    print((args.out / "formats_drain.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
