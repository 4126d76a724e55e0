"""What each of sluice's guarantees costs per event, stage by stage, against the minimal
pipeline's own steps (``bench.minimal``), on the same demo events in one process.

    .venv/bin/python -m bench.guarantee_costs                 # both models; bench/results/guarantee_costs.md
    .venv/bin/python -m bench.guarantee_costs --models fraud-mlp --seconds 1

No broker: each stage is one of sluice's own functions (the ones the live worker calls per
batch) run over in-memory batches of 512 consumer records, timed on this thread in CPU time
(``time.thread_time``: what the event loop's thread spends), the best of ``--rounds`` rounds
of ``--seconds`` (wall time) each. The minimal pipeline's steps are timed the same way, so each row says
what sluice does beyond the plain step and what that costs. The drains of both against the real
broker are ``bench.latency --strategies adaptive,minimal``; this table says where the
difference goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import torch
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import ConsumerRecord

from app.build import PRODUCER_SETTINGS
from app.demo_events import demo_events
from bench.ceilings import _Unused, demo_parts
from bench.latency import RESULTS
from bench.minimal import Event, History, HistoryEvent
from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS
from models.runner import TorchRunner
from streams.codecs.encode import encode_predictions
from streams.flow.batcher import Batcher, BatchPolicy
from streams.flow.cost_model import CostModel
from streams.flow.live_stats import LiveStats
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.kafka.batches import DEFAULT_MAX_RECORD_BYTES, by_partition, fill, oversized
from streams.kafka.group_commits import GroupCommits
from streams.metrics import PipelineMetrics
from streams.records import OutputRecord, header_picker

BATCH = 512
MINIMAL_BATCH_BYTES = 1024 * 1024  # bench.minimal's producer's max_batch_size
TOPIC = "events"


def consumer_records(count: int, *, headers: bool) -> list[ConsumerRecord[bytes, bytes]]:
    """Demo events as the consumer hands them over: one partition, offsets in order."""
    trace = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")] if headers else []
    now = int(time.time() * 1000)
    return [
        ConsumerRecord(TOPIC, 0, offset, now, 0, e.key, e.value, None, len(e.key), len(e.value), list(trace))
        for offset, e in enumerate(demo_events(count, seed=7))
    ]


async def per_event_us(step: Callable[[], Awaitable[object]], events: int, seconds: float, rounds: int) -> float:
    """The best round's thread CPU microseconds per event of ``step`` (it handles ``events``), awaited
    in one task (no event loop turn per call). A round lasts ``seconds`` of wall time: a step that
    waits (on the inference thread) uses little CPU here."""
    best = float("inf")
    for _ in range(rounds):
        calls, started, wall = 0, time.thread_time(), time.perf_counter()
        while time.perf_counter() - wall < seconds or not calls:
            await step()
            calls += 1
        best = min(best, (time.thread_time() - started) / (calls * events) * 1e6)
    return best


class InlineRunner:
    """The demo model called on this thread: what scoring costs without sluice's inference thread."""

    def __init__(self, runner: TorchRunner) -> None:
        self.runner, self.name, self.version = runner, runner.name, runner.version

    async def predict(self, inputs: Any) -> np.ndarray:
        return self.runner.predict_now(inputs)

    async def aclose(self) -> None:
        return None


def stages(model: str, seconds: float, rounds: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    loop = asyncio.new_event_loop()
    records = consumer_records(BATCH, headers=False)
    traced = consumer_records(BATCH, headers=True)
    module = load_model(ModelSpec(demo=model)).module.eval()
    runner = TorchRunner(module, name=model, version="1", threads=1)
    pipeline = Pipeline(
        name="costs",
        **demo_parts(model),
        runner=InlineRunner(runner),
        sink=_Unused(),
        topics=PipelineTopics("out", "dlq"),
    )
    stateful = pipeline.stateful is not None

    def time_async(step: Callable[[], Awaitable[object]]) -> float:
        return loop.run_until_complete(per_event_us(step, BATCH, seconds, rounds))

    def time_it(step: Callable[[], object]) -> float:
        async def awaited() -> object:
            return step()

        return time_async(awaited)

    # The minimal pipeline's steps.
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(HistoryEvent if stateful else Event)
    history = History()
    events = [decoder.decode(r.value) for r in records]

    def minimal_decode() -> list[np.ndarray]:
        decoded = [decoder.decode(r.value) for r in records]
        inputs = [np.array([e.features for e in decoded], dtype=np.float32)]
        if stateful:
            inputs.append(history.batch([r.key for r in records], decoded))
        return inputs

    inputs = [torch.from_numpy(x) for x in minimal_decode()]

    def minimal_model() -> object:
        with torch.inference_mode():
            return module(*inputs).tolist()

    predictions = minimal_model()
    assert isinstance(predictions, list)

    def minimal_encode() -> object:
        return [
            orjson.dumps({"id": e.id, "prediction": p, "event_ts": r.timestamp})
            for r, e, p in zip(records, events, predictions, strict=True)
        ]

    bodies = minimal_encode()

    def new_batch(size: int = MINIMAL_BATCH_BYTES) -> BatchBuilder:
        return BatchBuilder(size, 0)  # what a producer's create_batch makes, of its max_batch_size

    def minimal_frame() -> object:
        batch = new_batch()
        for r, body in zip(records, bodies, strict=True):  # type: ignore[call-overload]
            batch.append(key=r.key, value=body, timestamp=None)
        return batch.close()

    # sluice's.
    decoded = pipeline.featurize(records, pipeline.decode(records))
    array = np.asarray(predictions, dtype=np.float32)

    def encode(source: list[ConsumerRecord[bytes, bytes]], headers: str) -> list[OutputRecord]:
        return encode_predictions(
            source, decoded, array, topic="out", model_name=model, model_version="1",
            now_ms=int(time.time() * 1000), headers_of=header_picker(headers),  # type: ignore[arg-type]
        )  # fmt: skip

    outputs, traced_outputs = encode(records, "all"), encode(traced, "all")

    def frame(outputs: list[OutputRecord]) -> object:
        # KafkaSink._send's work before the network: the size limits, the partitions, the appends.
        oversized(outputs, lambda topic: DEFAULT_MAX_RECORD_BYTES)
        for group in by_partition(outputs, {"out": 2}).values():
            fill(new_batch(PRODUCER_SETTINGS["live"]["max_batch_size"]), group, 0)
        return None

    batcher = Batcher(BatchPolicy(max_batch_size=BATCH, latency_budget_ms=50), CostModel())

    def batch_plan() -> object:
        now = time.time() * 1000
        batcher.add(records, now)
        plan = batcher.plan(now, 0)
        taken = batcher.take(plan, now)
        batcher.observe(len(taken), 0.004)
        return taken

    commits = GroupCommits(_never_commit, interval_ms=1000)

    def acknowledge() -> object:
        commits.acknowledged(records, BATCH, 0)
        stamps = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))
        return time.time() * 1000 - stamps

    metrics, stats = PipelineMetrics("costs"), LiveStats()
    latencies = acknowledge()
    assert isinstance(latencies, np.ndarray)

    def observe() -> object:
        metrics.scored_batch(BATCH, 0.004, {})
        metrics.acknowledged(BATCH, latencies / 1000, 0)
        stats.record(events=BATCH, scored=BATCH, dead_lettered=0, latencies_ms=latencies, late=0)
        return None

    def score_inline() -> Awaitable[object]:
        return pipeline.finish(records, decoded)

    def score_in_thread() -> Awaitable[object]:
        return runner.predict(decoded.inputs)

    model_us, encode_us = time_it(minimal_model), time_it(lambda: encode(records, "all"))
    frame_us = time_it(lambda: frame(outputs))
    state = "; per-key state: the history feature, kept with TTL for the changelog" if stateful else ""
    rows = [
        ("decode", "msgspec: id and the model's fields, np.array", time_it(minimal_decode),
         "strict decoding: size limits, UTF-8 and number ranges as orjson reads them, ids, finite inputs, "
         f"a dead letter per bad event{state}",
         time_it(lambda: pipeline.featurize(records, pipeline.decode(records)))),
        ("model", "the module called on the loop's thread", model_us,
         "the same module on the inference thread, and the loop's hand-off to it per batch",
         model_us + time_async(score_in_thread)),
        ("scoring bookkeeping", "", 0.0,
         "roles (canary, fallback, breaker), per-row isolation, non-finite checks, model statistics"
         + ("; the keys' new state written" if stateful else ""),
         time_async(score_inline) - encode_us - model_us),
        ("encode", "orjson.dumps of {id, prediction, event_ts}", time_it(minimal_encode),
         "the output's extra fields: model, version, source position, latency_ms", encode_us),
        ("produce framing", "append to the record batch", time_it(minimal_frame),
         "size limits, partitions", frame_us),
        ("headers", "", 0.0, "a traceparent header copied to each output (encode and framing)",
         time_it(lambda: encode(traced, "all")) + time_it(lambda: frame(traced_outputs)) - encode_us - frame_us),
        ("batching", "", 0.0, "the latency-budget batcher and its cost model", time_it(batch_plan)),
        ("acknowledgement", "", 0.0, "acknowledged offsets for commits, each event's latency", time_it(acknowledge)),
        ("metrics", "", 0.0, "Prometheus histograms and the stats line", time_it(observe)),
    ]  # fmt: skip
    loop.run_until_complete(runner.aclose())
    loop.close()
    return [
        {"stage": stage, "minimal": minimal, "minimal_us": round(m_us, 3), "sluice": what, "sluice_us": round(s_us, 3)}
        for stage, minimal, m_us, what, s_us in rows
    ]


async def _never_commit(offsets: object) -> bool:
    return True


def write_report(results: dict[str, Any], out: Path) -> None:
    lines = [
        f"# What each guarantee costs per event ({results['started']})",
        "",
        "Reproduce: `.venv/bin/python -m bench.guarantee_costs`. Thread CPU microseconds per event of each stage, "
        f"batches of {BATCH} demo events in memory (no broker), the best of {results['rounds']} rounds of "
        f"{results['seconds']:g} s, 1 torch thread. The left columns are the minimal pipeline's own step "
        "(`bench/minimal.py`), the right ones what sluice does in its place and what that costs. "
        "A blank minimal step is one it does not take at all.",
        "",
    ]
    for model, rows in results["models"].items():
        total_m = sum(r["minimal_us"] for r in rows)
        total_s = sum(r["sluice_us"] for r in rows)
        lines += [
            f"## {model}",
            "",
            "| stage | minimal pipeline | µs/event | sluice | µs/event | extra µs/event |",
            "| --- | --- | ---: | --- | ---: | ---: |",
        ]
        for r in rows:
            minimal = f"{r['minimal_us']:.2f}" if r["minimal"] else ""
            lines.append(
                f"| {r['stage']} | {r['minimal']} | {minimal} | {r['sluice']} | {r['sluice_us']:.2f} | "
                f"{r['sluice_us'] - r['minimal_us']:+.2f} |"
            )
        lines += [
            f"| **all stages** | | {total_m:.2f} | | {total_s:.2f} | {total_s - total_m:+.2f} |",
            "",
            "Not in these stages: fetching (the same `getmany` for both) and the network side of producing. "
            "Scoring bookkeeping is a difference (the whole scoring step, model called inline, less the model "
            "and the encoding), so it carries their noise: for the transformer, a few µs of its model's swing.",
            "",
        ]
    (out / "guarantee_costs.md").write_text("\n".join(lines))
    (out / "guarantee_costs.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEMO_MODELS))
    parser.add_argument("--seconds", type=float, default=0.5, help="length of each timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": args.seconds,
        "rounds": args.rounds,
        "models": {},
    }
    for model in args.models.split(","):
        results["models"][model] = stages(model, args.seconds, args.rounds)
        for r in results["models"][model]:
            print(f"{model:18s} {r['stage']:20s} minimal {r['minimal_us']:6.2f}  sluice {r['sluice_us']:6.2f} µs/event")
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(results, args.out)
    print(f"results: {args.out / 'guarantee_costs.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
