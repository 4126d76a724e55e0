"""Encoding outputs alone, side by side in one run: microseconds per output for 4,096-prediction
batches shaped like the demo's (string ids, one topic, four partitions), one thread, no Kafka.

    .venv/bin/python -m bench.encode                 # results to bench/results/encode.{md,json}
    .venv/bin/python -m bench.encode --rounds 30

What is compared, on the same batch:

- JSON, the common case (one finite number per event, the champion's): byte templates;
- JSON, a canary's outputs (one more field): a dict per output, written by orjson;
- Avro (``output_format = "avro"``), the common case: byte templates (``streams.codecs.avro_scalars``);
- Avro, several outputs per event (two numbers each): a dict per output, fastavro's writer;
- the reference for Avro, independent of sluice's code: fastavro's ``schemaless_writer`` alone on
  the same outputs as dicts built beforehand (no keys, headers or output records).

Rounds are interleaved and the best round is reported with the median.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import numpy as np

from streams.codecs.avro_outputs import AvroOutputs, output_schema
from streams.codecs.codec import Decoded, encode_predictions
from streams.records import InputRecord

RESULTS = Path(__file__).parent / "results"
NOW_MS = 1_765_000_000_000


def variants(events: int) -> dict[str, Callable[[], object]]:
    records = [
        InputRecord("transactions", i % 4, 1_000_000 + i, NOW_MS - 20 - i % 7, f"acct-{i % 997}".encode(), b"{}")
        for i in range(events)
    ]
    decoded = Decoded(np.arange(events), [f"tx-{i:08d}" for i in range(events)], [])
    rng = np.random.default_rng(3)
    scores = rng.random(events, dtype=np.float32)
    pairs = rng.random((events, 2), dtype=np.float32)
    avro = AvroOutputs(output_schema("fraud"), 7)
    names = {"topic": "fraud-scores", "model_name": "fraud-mlp", "model_version": "1", "now_ms": NOW_MS}
    docs = [avro.decode(o.value) for o in encode_predictions(records, decoded, scores, avro=avro, **names)]

    def fastavro_alone() -> None:
        for doc in docs:
            fastavro.schemaless_writer(io.BytesIO(), avro.parsed, doc)

    return {
        "json: one number per event (templates)": lambda: encode_predictions(records, decoded, scores, **names),
        "json: a canary's outputs (dict + orjson)": lambda: encode_predictions(
            records, decoded, scores, extra={"role": "canary"}, **names
        ),
        "avro: one number per event (templates)": lambda: encode_predictions(
            records, decoded, scores, avro=avro, **names
        ),
        "avro: two numbers per event (dict + fastavro)": lambda: encode_predictions(
            records, decoded, pairs, avro=avro, **names
        ),
        "avro reference: fastavro schemaless_writer alone": fastavro_alone,
    }


def measure(events: int, rounds: int) -> dict[str, dict[str, float]]:
    runs = variants(events)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / events * 1e6)
    return {name: {"best": min(t), "median": statistics.median(t)} for name, t in times.items()}


def write_report(results: dict[str, Any], out: Path) -> None:
    rows = results["us_per_output"]
    json_best = next(iter(rows.values()))["best"]
    lines = [
        "# Encoding outputs alone",
        "",
        f"Run {results['started']}: {results['events']:,}-prediction batches, one thread, no Kafka; best and median "
        f"of {results['rounds']} interleaved rounds. Reproduce: `.venv/bin/python -m bench.encode`.",
        "",
        "| encoder | us/output (best) | us/output (median) | vs JSON |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {name} | {r['best']:.2f} | {r['median']:.2f} | {r['best'] / json_best:.2f}x |"
            for name, r in rows.items()
        ),
        "",
    ]
    (out / "encode.md").write_text("\n".join(lines))
    (out / "encode.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = datetime.now().isoformat(sep=" ", timespec="seconds")
    results = {
        "started": started,
        "events": args.events,
        "rounds": args.rounds,
        "us_per_output": measure(args.events, args.rounds),
    }
    write_report(results, args.out)
    print((args.out / "encode.md").read_text())


if __name__ == "__main__":
    main()
