"""Does a shadow delay the champion? End-to-end latency at the same offered loads, with and
without a shadow ten times as costly as the champion, in alternating rounds, against the real broker:
the shadow in a process of its own (the default), the same without its pause while the champion
scores (``pause_while_champion_scores = false``: variant ``unpaused``), and on a thread of the worker
(``isolation = "thread"``).

    docker/kafka-local start
    .venv/bin/python -m bench.shadow                       # 3 rounds, 10 s per load point
    .venv/bin/python -m bench.shadow --rounds 1 --seconds 4 --out /tmp/bench   # a quick check

The champion is the demo MLP; the shadow is the same MLP computed ten times per batch
(``bench.shadow_model``: real CPU work, on one thread). Loads are fractions of the
champion's drain rate, measured first in the same run. Each round starts a fresh worker per
variant (the order alternates between rounds, so drift in the machine does not favour one),
warms it up, then offers each load open loop for ``--seconds``. Latency is the broker's:
input CreateTime to output LogAppendTime (``bench.latency.load_point``). The shadow's side:
how many of the offered events it scored (its topic), the rest skipped whole batches.
The control `burner` runs no shadow but a process at the shadow's priority burning all the CPU
it gets: what any process using the spare CPU costs the champion on this machine.
Results: bench/results/shadow.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.ceilings import drop_topics
from bench.latency import (
    BOOTSTRAP,
    BUDGET_MS,
    PARTITIONS,
    ROOT,
    cpu_seconds,
    create_topics,
    end_offsets,
    events,
    load_point,
    produce,
    saturation,
    stop_worker,
    wait_for_outputs,
    write_sluice_config,
)

RESULTS = ROOT / "bench" / "results"
WEIGHTS = ROOT / "models" / "weights" / "fraud-mlp.pt"
MODEL = "fraud-mlp"
REPEAT = 10


# Without a shadow; with one in its own process; with one on a thread of the worker.
# And, as a control, no shadow but a process of the shadow's priority using all the CPU it gets:
# what any process taking the spare CPU costs the champion on this machine.
VARIANTS = ("alone", "process", "unpaused", "thread", "burner")
SHADOWS = ("process", "unpaused", "thread")
SHOWN = {
    "alone": "none",
    "process": "own process",
    "unpaused": "own process, not paused while the champion scores",
    "thread": "worker's thread",
    "burner": "none; a CPU burner at the shadow's priority",
}
# The control: one thread of numpy matrix products (like a model's), at nice 19 in the idle class.
BURNER = """
import os, numpy as np
os.nice(19)
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
while True:
    a = np.tanh(a @ a.T * 0.01)
"""


def write_config(path: Path, topic_in: str, topic_out: str, *, variant: str) -> None:
    isolation = "thread" if variant == "thread" else "process"
    paused = "false" if variant == "unpaused" else "true"
    heavy = (
        f'shadows.heavy = {{ class = "bench.shadow_model:RepeatedMLP", state_dict = "{WEIGHTS}", '
        f'version = "x{REPEAT}", init_args = {{ repeat = {REPEAT} }}, isolation = "{isolation}", '
        f"pause_while_champion_scores = {paused} }}\n"
    )
    write_sluice_config(path, MODEL, topic_in, topic_out, more=heavy if variant in SHADOWS else "")


def start(config: Path, workdir: Path, tag: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{tag}.log").open("wb")
    cmd = [sys.executable, "-m", "app.cli", "--config", str(config), "--datadir", str(workdir / f"data-{tag}")]
    cmd += ["worker", "-l", "info", "--without-web"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_burner() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BURNER], env={**os.environ, "OMP_NUM_THREADS": "1"})


async def measure(
    variant: str, rates: list[tuple[float, float]], seconds: float, workdir: Path, tag: str, seed: int
) -> list[dict[str, object]]:
    shadow = variant in SHADOWS
    topic_in, topic_out = f"{tag}-in", f"{tag}-out"
    await create_topics([topic_in])
    await create_topics([topic_out, f"{topic_out}-shadow"], log_append=True)
    config = workdir / f"{tag}.toml"
    write_config(config, topic_in, topic_out, variant=variant)
    worker = start(config, workdir, tag)
    burner: subprocess.Popen[bytes] | None = None
    try:
        warm = events(2_000, seed=seed)
        await produce(topic_in, warm)
        await wait_for_outputs(topic_out, len(warm), timeout_s=120, worker=worker)
        points = []
        children = child_pids(worker.pid)  # the shadow's process, when it has one
        if variant == "burner":
            burner = start_burner()
            children = [burner.pid]
        broker = broker_pid()
        for fraction, rate in rates:
            shadow_start = await end_offsets(f"{topic_out}-shadow")
            child_cpu = sum(cpu_seconds(pid) for pid in children)
            broker_cpu = cpu_seconds(broker) if broker else 0.0
            point = await load_point(
                MODEL, variant, fraction, rate, topic_in, topic_out, seconds, seed, worker_pid=worker.pid
            )
            entry: dict[str, object] = {**point.__dict__, "variant": variant}
            # The broker's CPU per offered event (on this machine it shares the cores with the worker).
            entry["broker_cpu_us"] = (
                (cpu_seconds(broker) - broker_cpu) / max(20, int(rate * seconds)) * 1e6 if broker else 0.0
            )
            if shadow:
                offered = int(max(20, int(rate * seconds)))
                after = await end_offsets(f"{topic_out}-shadow")
                scored = sum(after.values()) - sum(shadow_start.values())
                entry["shadow_scored_share"] = scored / offered
            if children:
                # The shadow's own process's (or the burner's) CPU per offered event (a thread's is in the worker's).
                offered = int(max(20, int(rate * seconds)))
                entry["shadow_cpu_us"] = (sum(cpu_seconds(pid) for pid in children) - child_cpu) / offered * 1e6
            points.append(entry)
            seed += 1
        return points
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
        stop_worker(worker)


def broker_pid() -> int | None:
    """The local broker's process (``docker/kafka-local``'s), if this machine runs it."""
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"kafka.Kafka" in stat.read_bytes():
                return int(stat.parent.name)
        except OSError:
            continue
    return None


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's ``/proc/PID/task/*/children``); none elsewhere."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(x) for x in children.read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    return found


def summary(points: list[dict[str, object]], fractions: list[float]) -> list[dict[str, float]]:
    rows = []
    for fraction in fractions:
        row: dict[str, float] = {"fraction": fraction}
        for label in VARIANTS:
            mine = [p for p in points if p["fraction"] == fraction and p["variant"] == label]
            if not mine:
                continue
            for q in ("p50_ms", "p99_ms", "worker_cpu_us", "broker_cpu_us"):
                values = np.array([float(p[q]) for p in mine])  # type: ignore[arg-type]
                row[f"{label}_{q}_median"] = float(np.median(values))
                row[f"{label}_{q}_min"] = float(values.min())
                row[f"{label}_{q}_max"] = float(values.max())
        for label in VARIANTS:
            mine = [p for p in points if p["fraction"] == fraction and p["variant"] == label]
            shares = [float(p["shadow_scored_share"]) for p in mine if "shadow_scored_share" in p]  # type: ignore[arg-type]
            if shares:
                row[f"{label}_scored_share"] = float(np.median(shares))
            if any("shadow_cpu_us" in p for p in mine):
                row[f"{label}_shadow_cpu_us"] = float(np.median([float(p.get("shadow_cpu_us", 0.0)) for p in mine]))  # type: ignore[arg-type]
        rows.append(row)
    return rows


def markdown(results: dict[str, object]) -> str:
    lines = [
        "# A shadow beside the champion: latency at the same offered loads",
        "",
        f"Run {results['started']} on {results['cpus']} CPUs, {PARTITIONS} partitions, budget {BUDGET_MS} ms, "
        f"champion `{MODEL}`, shadow: the same MLP computed {REPEAT}x per batch on one thread, in a process "
        'of its own (the default) or on a thread of the worker (`isolation = "thread"`). '
        f"{results['rounds']} rounds of {results['seconds']:.0f} s per point, a fresh worker per variant and "
        f"round; the champion drains a backlog at {results['drain_per_s']:,.0f}/s. Median over rounds "
        "(min-max in brackets). Command: `python -m bench.shadow --rounds "
        f"{results['rounds']} --seconds {results['seconds']:g} --fractions "
        f"{','.join(f'{f:g}' for f in results['fractions'])}`.",
        "",
        "| load | offered/s | shadow | p50 | p99 | CPU µs/event: worker | broker | shadow's process "
        "| events the shadow scored |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, (_, rate) in zip(results["summary"], results["rates"], strict=True):  # type: ignore[call-overload]

        def cell(label: str, q: str, row: dict[str, float] = row) -> str:
            return f"{row[f'{label}_{q}_median']:.1f} ms ({row[f'{label}_{q}_min']:.1f}-{row[f'{label}_{q}_max']:.1f})"

        for label in VARIANTS:
            if f"{label}_p50_ms_median" not in row:
                continue
            share = f"{row[f'{label}_scored_share']:.0%}" if f"{label}_scored_share" in row else "-"
            own = f"{row[f'{label}_shadow_cpu_us']:.1f}" if f"{label}_shadow_cpu_us" in row else "-"
            lines.append(
                f"| {row['fraction']:.0%} | {rate:,.0f} | {SHOWN[label]} | {cell(label, 'p50_ms')} | "
                f"{cell(label, 'p99_ms')} | {row[f'{label}_worker_cpu_us_median']:.1f} | "
                f"{row[f'{label}_broker_cpu_us_median']:.1f} | {own} | {share} |"
            )
    lines += [
        "",
        "CPU is per offered event, from `/proc`: the worker's (every thread, a thread shadow's included), "
        "the broker's, and the shadow's own process's (or the control's). The control runs no shadow but a "
        "process at the shadow's priority (nice 19, idle class) burning all the CPU it gets: what any "
        "process using the spare CPU costs the champion on this machine. Every point's raw figures, "
        "saturation flags included, are in `shadow.json`.",
    ]
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = args.out / "tmp" / "shadow"  # worker logs and data; bench/results/tmp is not kept in git
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"shadowbench-{int(time.time())}"
    try:
        drained, _ = await saturation(
            MODEL, "adaptive", workdir, args.seconds, tag=f"{prefix}-sat", first_backlog=20_000,
            drain_seconds=args.seconds, max_backlog=400_000, drain_only=True,
        )  # fmt: skip
        stop_worker(drained.worker)
        rates = [(f, f * drained.per_s) for f in args.fractions]
        points: list[dict[str, object]] = []
        for r in range(args.rounds):
            order = args.variants if r % 2 == 0 else args.variants[::-1]
            for variant in order:
                tag = f"{prefix}-r{r}-{variant}"
                points += await measure(variant, rates, args.seconds, workdir, tag, seed=100 + 10 * r)
    finally:
        await drop_topics(BOOTSTRAP, prefix)
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "fractions": args.fractions,
        "drain_per_s": drained.per_s,
        "rates": rates,
        "points": points,
        "summary": summary(points, args.fractions),
    }


def variants(text: str) -> list[str]:
    chosen = [v.strip() for v in text.split(",")]
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"variants are {', '.join(VARIANTS)}, not {', '.join(unknown)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.4])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--variants", type=variants, default=list(VARIANTS), help=", ".join(VARIANTS))
    args = parser.parse_args()
    results = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shadow.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "shadow.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
