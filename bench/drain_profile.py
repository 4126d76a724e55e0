"""Where a drain's CPU goes, stage by stage: ``sluice worker`` beside the minimal pipeline, in one run.

    docker/kafka-local start
    .venv/bin/python -m bench.drain_profile                      # fraud-mlp, 400,000 events, 2 rounds
    .venv/bin/python -m bench.drain_profile --backlog 50000 --rounds 1   # a quick check

Each round, for each strategy (``adaptive``: the sluice worker; ``minimal``: bench/minimal.py),
two drains of the same backlog through bench.latency: one plain, for the drain rate and the
worker's CPU microseconds per event (``/proc``, every thread), and one with py-spy sampling
the worker from its first output to its last (py-spy pauses it for each sample, so that
drain's rate is not counted). Each sampled stack goes to the stage (``STAGES``) of its
innermost frame that holds a mark; a stage's share of the busy samples times the plain drain's
CPU per event is that stage's CPU per event. py-spy counts a thread waiting for Python's GIL
as busy: samples of the inference thread waiting in its own loop (for a batch, or for the GIL
back) are counted apart (``WAITING``) and left out of the shares. The two columns then say
where sluice spends what the minimal pipeline does not: the issue-26 goal (a drain of at
least 0.8 of the minimal pipeline's) is met or its miss explained by this table.
bench.guarantee_costs measures the same stages in memory, without the broker; this one
measures them inside a real drain.

Results go to bench/results/drain_profile.{md,json}; the run's topics are deleted. Needs
py-spy (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import bench.latency as latency
from bench.ceilings import drop_topics
from bench.latency import BOOTSTRAP, RESULTS, create_topics, events, produce, start_worker, stop_worker
from bench.state import machine

STRATEGIES = ("adaptive", "minimal")
# (stage, marks). A sampled stack is read from its innermost frame out: the first frame holding a
# mark names the stage (stages in this order where one frame holds marks of several). So the
# model's torch frames count as the model wherever they are called from, aiokafka's record
# frames as the producer or the fetch that called them, and the event loop only what nothing
# inside it claimed. bench/minimal.py names each of its steps as a function for this.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model (torch)", ("torch/",)),
    # The minimal pipeline's score() builds its input arrays from the decoded events (its torch
    # frames are the model's): sluice's decode builds them too.
    ("decode", ("codecs/codec.py", "fast_decode.py", "careful_decode.py", "decode_events (bench", "score (bench")),
    ("encode outputs", ("codecs/encode.py", "encode_outputs (bench/minimal.py")),
    ("record batches (size checks, partitions)", ("kafka/batches.py", "kafka/sink.py", "produce (bench")),
    ("producer: appends, requests, acks (aiokafka)", ("aiokafka/producer/",)),
    # Offset commits go through aiokafka's group coordinator: before the fetch's broader mark.
    ("acknowledgements and commits", ("acknowledger.py", "flow/partitions.py", "streams/source.py", "coordinator.py")),
    ("fetch: getmany and its records (aiokafka)", ("aiokafka/consumer/",)),
    (
        "network (aiokafka connections, asyncio streams)",
        ("aiokafka/conn.py", "aiokafka/client.py", "asyncio/streams.py"),
    ),
    (
        "scoring bookkeeping (roles, isolation, breaker, hand-off to the inference thread)",
        ("flow/roles.py", "flow/isolation.py", "flow/breaker.py", "models/runner.py", "inference_thread.py"),
    ),
    ("model statistics and metrics", ("model_stats.py", "model_metrics.py", "streams/metrics.py", "live_stats.py")),
    (
        "engine loop (feeder, batcher, cost model, dispatcher, delivery; the minimal pipeline's loop)",
        (
            *("feeder.py", "batcher.py", "cost_model.py", "dispatcher.py", "delivery.py", "pipeline.py"),
            *("driver.py", "run (bench/minimal.py"),
        ),
    ),
)
OTHER = "other (Faust, the event loop itself, the rest)"
# The inference thread's own loop as the innermost frame: blocked on its queue, or taking the GIL
# back after it; not CPU the drain spends (see the module docstring).
WAITING = "InferenceThread._run (models/inference_thread.py"


def stage_of(stack: str) -> str:
    """The stage of a py-spy raw stack (frames outermost first, ``;``-separated)."""
    for frame in reversed(stack.split(";")):
        for name, marks in STAGES:
            if any(m in frame for m in marks):
                return name
    return OTHER


def stage_shares(raw: str) -> tuple[dict[str, float], int, int]:
    """Each stage's share of the busy samples in py-spy's raw output (``stack count`` lines), the
    busy samples counted, and the inference thread's waiting samples left out of them."""
    counts = dict.fromkeys([name for name, _ in STAGES] + [OTHER], 0)
    waiting = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack.strip() or not n.isdigit():
            continue
        if WAITING in stack.rpartition(";")[2]:
            waiting += int(n)
        else:
            counts[stage_of(stack)] += int(n)
    total = sum(counts.values())
    return {k: v / total if total else 0.0 for k, v in counts.items()}, total, waiting


async def plain_drain(strategy: str, workdir: Path, tag: str, count: int) -> tuple[float, float]:
    drained = await latency.drain_and_stop("fraud-mlp", strategy, workdir, tag=tag, count=count)
    if drained.cpu_us_per_event <= 0:
        raise RuntimeError(f"the {strategy} drain was over before its CPU could be measured: a larger --backlog")
    return drained.per_s, drained.cpu_us_per_event


def start_sampler(pid: int, raw: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling process ``pid`` at 200 Hz into ``raw`` (its raw format, each stack under its
    thread) until SIGINT; what it says goes to ``raw`` + ``.log``."""
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "--threads", "-f", "raw"]
    with raw.with_suffix(".log").open("wb") as log:  # py-spy has its own copy of the descriptor
        return subprocess.Popen([*spy, "-o", str(raw), "--pid", str(pid)], stdout=log, stderr=subprocess.STDOUT)


async def sampled_drain(strategy: str, workdir: Path, tag: str, count: int) -> str:
    """py-spy's raw stacks of a worker draining ``count`` events, from its first output to its last."""
    topic_in, topic_out = f"{tag}-in", f"{tag}-out"
    raw = workdir / f"{tag}.raw"
    worker: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        await create_topics([topic_in])
        await create_topics([topic_out], log_append=True)
        await produce(topic_in, events(count, seed=1))
        worker = start_worker(strategy, "fraud-mlp", topic_in, topic_out, workdir)
        await latency.wait_for_outputs(topic_out, 1, timeout_s=120, worker=worker)
        spy = start_sampler(worker.pid, raw)
        await latency.wait_for_outputs(topic_out, count, timeout_s=300, worker=worker)
        scored = await latency.outputs_on(topic_out)
        spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled, and stops
        await asyncio.to_thread(spy.wait, 60)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        if worker is not None:
            stop_worker(worker)
        await drop_topics(BOOTSTRAP, tag)
    said = raw.with_suffix(".log").read_text(errors="replace")[-1000:]
    if scored < count:
        raise RuntimeError(f"the sampled {strategy} drain scored {scored:,} of {count:,}")
    if spy is None or spy.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy could not sample the {strategy} worker (exit {spy.returncode}): {said}")
    return raw.read_text()


async def run(args: argparse.Namespace) -> dict:
    run_tag = f"drain-profile-{int(time.time())}"
    workdir = args.out / "tmp" / run_tag
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "command": args.command}
    results |= {"backlog": args.backlog, "partitions": latency.PARTITIONS, "rounds": []}
    started = time.perf_counter()
    plan = [(r, s) for r in range(1, args.rounds + 1) for s in STRATEGIES]
    try:
        for i, (round_, strategy) in enumerate(plan, start=1):
            tag = f"{run_tag}-{round_}-{strategy}"
            per_s, cpu_us = await plain_drain(strategy, workdir, f"{tag}-plain", args.backlog)
            raw = await sampled_drain(strategy, workdir, f"{tag}-sampled", args.backlog)
            shares, busy, waiting = stage_shares(raw)
            if not busy:
                raise RuntimeError(f"py-spy took no busy sample of the {strategy} worker")
            results["rounds"].append(
                {"round": round_, "strategy": strategy, "per_s": per_s, "cpu_us": cpu_us, "samples": busy}
                | {"waiting_samples": waiting, "shares": shares}
            )
            eta = (time.perf_counter() - started) / i * (len(plan) - i)
            print(
                f"  round {round_} {strategy}: {busy:,} busy samples ({waiting:,} of the inference thread "
                f"waiting, left out); {i}/{len(plan)} done, ETA {eta:.0f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        await drop_topics(BOOTSTRAP, run_tag)  # whatever a failed drain left
    results["summary"] = summary(results["rounds"])
    return results


def summary(rounds: list[dict]) -> dict:
    """Per strategy: mean rate, mean CPU per event, and each stage's CPU per event (mean share x mean CPU)."""
    out: dict = {}
    for strategy in STRATEGIES:
        mine = [r for r in rounds if r["strategy"] == strategy]
        if not mine:
            continue
        cpu = float(np.mean([r["cpu_us"] for r in mine]))
        shares = {k: float(np.mean([r["shares"][k] for r in mine])) for k in mine[0]["shares"]}
        out[strategy] = {
            "per_s": float(np.mean([r["per_s"] for r in mine])),
            "cpu_us": cpu,
            "stage_us": {k: v * cpu for k, v in shares.items()},
        }
    return out


def report(r: dict) -> str:
    s = r["summary"]
    sluice, minimal = s["adaptive"], s["minimal"]
    lines = [
        f"# Where a drain's CPU goes: sluice against the minimal pipeline (fraud-mlp, {r['started']})",
        "",
        f"Reproduce: `docker/kafka-local start && .venv/bin/{r['command']}`. Machine: {r['machine']}; the local "
        f"broker on the same cores. Backlog {r['backlog']:,} demo events on {r['partitions']} partitions, "
        f"{len(r['rounds']) // len(STRATEGIES)} rounds.",
        "",
        f"Drain rate (plain drains, mean): sluice **{sluice['per_s']:,.0f}/s**, minimal {minimal['per_s']:,.0f}/s: "
        f"**{sluice['per_s'] / minimal['per_s']:.2f}** of the minimal pipeline. Worker CPU per event (`/proc`, "
        f"every thread): sluice {sluice['cpu_us']:.2f} µs, minimal {minimal['cpu_us']:.2f} µs. Both drains are "
        "bound by one core (the event loop's thread holds the GIL): the rate is about the inverse of the CPU per "
        "event, so 0.8 of the minimal pipeline's rate needs sluice's CPU per event within "
        f"{minimal['cpu_us'] / 0.8:.2f} µs.",
        "",
        "Each stage's CPU per event: its share of py-spy's busy samples (a drain of its own, sampled at 200 Hz from "
        "the first output to the last) times the CPU per event above. py-spy counts a thread waiting for the GIL as "
        "busy: the inference thread's samples in its own loop (waiting for a batch, or for the GIL back) are left "
        "out; a thread waiting for the GIL elsewhere still counts in the stage it waits in.",
        "",
        "| stage | minimal µs/event | sluice µs/event | sluice extra |",
        "| --- | ---: | ---: | ---: |",
    ]
    for stage in sluice["stage_us"]:
        a, b = minimal["stage_us"].get(stage, 0.0), sluice["stage_us"][stage]
        lines.append(f"| {stage} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    lines += [
        f"| **all** | {minimal['cpu_us']:.2f} | {sluice['cpu_us']:.2f} | {sluice['cpu_us'] - minimal['cpu_us']:+.2f} |",
        "",
        "| round | strategy | drain events/s | CPU µs/event | busy samples | inference thread waiting (left out) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {x['round']} | {x['strategy']} | {x['per_s']:,.0f} | {x['cpu_us']:.2f} | {x['samples']:,} | "
        f"{x.get('waiting_samples', 0):,} |"
        for x in r["rounds"]
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=400_000, help="events in each drain's backlog")
    parser.add_argument("--rounds", type=int, default=2, help="plain and sampled drains of each strategy, this many")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.backlog < 1 or args.rounds < 1:
        parser.error("--backlog and --rounds must be at least 1")
    if shutil.which("py-spy", path=str(Path(sys.executable).parent)) is None:
        print("bench.drain_profile: py-spy is not installed next to this Python: pip install -e '.[bench]'")
        return 2
    args.command = " ".join(["python -m bench.drain_profile", *sys.argv[1:]])
    results = asyncio.run(run(args))
    (args.out / "drain_profile.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "drain_profile.md").write_text(report(results))
    print(f"results: {args.out / 'drain_profile.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
