"""How cost grows, against the real broker: the worker's resident memory as its per-key state
grows, and its throughput with more partitions, beside the hand-written minimal pipeline
(issue 26, item 5).

    docker/kafka-local start
    .venv/bin/python -m bench.growth            # 10,000 and 1,000,000 keys; 200,000-event backlog at 1, 2, 4 partitions
    .venv/bin/python -m bench.growth --keys 2000 --backlog 5000 --rounds 1 --out /tmp/growth  # a quick check

1. Memory: the live worker (``app.cli worker``, fraud-mlp) with the ``STATE`` table of bench/state.py
   (memory store, keyed by the record key), started on empty topics; its VmRSS and VmHWM from
   ``/proc/<pid>/status`` once it logged ``ready:`` (the baseline, no keys yet), then fed one demo
   event for each of N distinct keys (``--keys``), produced by key in chunks while it runs; once the
   N-th output is on the output topic and ``--settle`` seconds have passed (a commit), VmRSS again.
   Bytes per key: (RSS after - baseline) / N. The control is the same worker without the state
   table, fed the same events: the difference between the two is the state's share.
2. Throughput: a backlog of ``--backlog`` demo events on topics of P partitions (``--partitions``)
   drained by the sluice worker (strategy "adaptive") and by bench/minimal.py (strategy "minimal"),
   each by ``bench.latency.drain`` (a fresh worker, rate by the outputs' append times, the worker's
   CPU per event from ``/proc``), alternately, ``--rounds`` times each.

Results go to bench/results/growth.{md,json}; the run's topics and temporary directories are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

import bench.exactly_once as exactly_once
import bench.latency as latency
from app.demo_events import demo_events
from bench.ceilings import drop_topics
from bench.latency import (
    BOOTSTRAP,
    RESULTS,
    create_topics,
    log_tail,
    outputs_on,
    stop_worker,
    wait_for_outputs,
)
from bench.state import STATE, machine, produce_by_key, progress, state_lines

MODEL = "fraud-mlp"
STRATEGIES = ("adaptive", "minimal")  # bench.latency.start_worker's names: sluice's worker, bench/minimal.py
KEY = b"acct-%07d"  # 12 bytes up to 10 million keys, as bench.state's in-process memory measure
CHUNK = 50_000  # events generated and produced at a time: the benchmark itself holds no more


def counts(text: str) -> list[int]:
    """``"10000,1_000_000"`` -> ``[10000, 1000000]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def status_memory(text: str) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (resident at most, since the process started) in bytes, from
    the text of ``/proc/<pid>/status`` (which gives them in kB)."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            number, unit = value.split()
            assert unit == "kB", line
            found[name.lower()] = int(number) * 1024
    return found


def worker_memory(pid: int) -> dict[str, int]:
    return status_memory(Path(f"/proc/{pid}/status").read_text())


def keyed(items: list[tuple[bytes, bytes]], first: int) -> list[tuple[bytes, bytes]]:
    """Demo events given keys ``first``, ``first + 1``, ...: the record key and the ``account`` field
    of the value alike (the state keys on the record key; a ``key_field = "account"`` would agree)."""
    out = []
    for n, (_, value) in enumerate(items, start=first):
        key = KEY % n
        doc = orjson.loads(value)
        doc["account"] = key.decode()
        out.append((key, orjson.dumps(doc)))
    return out


def keyed_events(start: int, count: int, seed: int = 1) -> list[tuple[bytes, bytes]]:
    """Events ``start`` to ``start + count`` of the demo stream, each with a key of its own."""
    return keyed([(e.key, e.value) for e in demo_events(count, seed=seed, start=start)], start)


def logged_ready(log: Path) -> bool:
    return b"ready:" in (log.read_bytes() if log.exists() else b"")


async def wait_ready(worker: subprocess.Popen[bytes], log: Path, timeout_s: float = 180.0) -> float:
    """Seconds until the worker logged ``ready:`` (its partitions assigned, its model warm)."""
    started = time.perf_counter()
    while not logged_ready(log):
        if worker.poll() is not None or time.perf_counter() - started > timeout_s:
            raise RuntimeError(f"the worker never logged ready: (exit {worker.poll()}):\n{log_tail(log)}")
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


async def watch_outputs(what: str, topic: str, total: int, started: float, every_s: float = 10.0) -> None:
    """Progress lines of the outputs on ``topic``, by its end offsets, until cancelled."""
    while True:
        await asyncio.sleep(every_s)
        progress(f"{what}: outputs", await outputs_on(topic), total, started)


async def memory(label: str, keys: int, args: argparse.Namespace, workdir: Path) -> dict:
    """One worker (``label``: "state" or "plain") fed ``keys`` events of distinct keys."""
    latency.PARTITIONS = exactly_once.PARTITIONS = args.memory_partitions
    tag = f"{args.tag}-memory-{label}-{keys}"
    try:
        await create_topics([f"{tag}-in"])
        await create_topics([f"{tag}-out"], log_append=True)
        # exactly_once.start_worker's ``delivery`` is lines for the pipeline's table: the state table goes there.
        worker = exactly_once.start_worker(tag, MODEL, state_lines("", workdir) if label == "state" else "", workdir)
        try:
            return await _memory(label, keys, tag, worker, workdir / f"{tag}.log", args.settle)
        finally:
            stop_worker(worker)
    finally:
        await drop_topics(BOOTSTRAP, f"{tag}-")
        shutil.rmtree(workdir / f"{tag}-data", ignore_errors=True)


async def _memory(label: str, keys: int, tag: str, worker: subprocess.Popen[bytes], log: Path, settle: float) -> dict:
    ready_s = await wait_ready(worker, log)
    await asyncio.sleep(settle)
    before = worker_memory(worker.pid)
    what = f"{label}, {keys:,} keys"
    started = time.perf_counter()
    watcher = asyncio.create_task(watch_outputs(what, f"{tag}-out", keys, started))
    try:
        for start in range(0, keys, CHUNK):
            items = keyed_events(start, min(CHUNK, keys - start))
            await produce_by_key(f"{tag}-in", items)
            progress(f"{what}: produced", start + len(items), keys, started)
            if worker.poll() is not None:
                break
        cpu_us = await wait_for_outputs(f"{tag}-out", keys, timeout_s=120 + keys / 1000, worker=worker)
    finally:
        watcher.cancel()
    seconds = time.perf_counter() - started
    scored = await outputs_on(f"{tag}-out")
    if worker.poll() is not None or scored < keys:
        raise RuntimeError(f"the {what} worker scored {scored:,} of {keys:,} (exit {worker.poll()}):\n{log_tail(log)}")
    await asyncio.sleep(settle)  # a commit (every second by default), and the changelog flush with it
    after = worker_memory(worker.pid)
    row = {"label": label, "keys": keys, "ready_s": ready_s, "scored": scored, "seconds": seconds}
    row |= {"baseline_rss": before["vmrss"], "baseline_hwm": before["vmhwm"], "rss": after["vmrss"]}
    row |= {"hwm": after["vmhwm"], "bytes_per_key": (after["vmrss"] - before["vmrss"]) / keys}
    row |= {"ingest_per_s": keys / seconds, "cpu_us_per_event": cpu_us}
    print(
        f"  {what}: RSS {before['vmrss'] / 2**20:,.0f} -> {after['vmrss'] / 2**20:,.0f} MiB "
        f"(peak {after['vmhwm'] / 2**20:,.0f}), {row['bytes_per_key']:,.0f} bytes/key; "
        f"{keys:,} scored in {seconds:.0f} s",
        flush=True,
    )
    return row


async def throughput(strategy: str, partitions: int, round_: int, args: argparse.Namespace, workdir: Path) -> dict:
    """``bench.latency.drain`` of the backlog on topics of ``partitions`` partitions by a fresh worker."""
    latency.PARTITIONS = exactly_once.PARTITIONS = partitions
    tag = f"{args.tag}-p{partitions}-r{round_}-{strategy}"
    own = workdir / tag  # start_worker's config, data and log go in the workdir it is given
    own.mkdir()
    try:
        done = await latency.drain_and_stop(MODEL, strategy, own, tag=tag, count=args.backlog)
    finally:
        shutil.rmtree(own, ignore_errors=True)
    return {
        "partitions": partitions,
        "round": round_,
        "strategy": strategy,
        "drain_per_s": done.per_s,
        "seconds": done.seconds,
        "cpu_us_per_event": done.cpu_us_per_event,
    }


def state_share(rows: list[dict]) -> dict[str, float]:
    """Per key count: the state worker's bytes per key less the plain worker's (the control's)."""
    per_key = {(r["label"], r["keys"]): r["bytes_per_key"] for r in rows}
    keys = sorted({r["keys"] for r in rows})
    return {str(k): per_key["state", k] - per_key["plain", k] for k in keys}


def summary(rows: list[dict], partitions: list[int]) -> dict[str, dict]:
    """Per partition count: each strategy's mean rate and CPU per event, and sluice / minimal."""
    out = {}
    for p in partitions:
        mine = {s: [r for r in rows if r["partitions"] == p and r["strategy"] == s] for s in STRATEGIES}
        entry: dict = {}
        for s, runs in mine.items():
            entry[f"{s}_per_s"] = float(np.mean([r["drain_per_s"] for r in runs]))
            # 0.0: a drain over within one of wait_for_outputs' polls (a quarter second) has no CPU figure.
            cpus = [r["cpu_us_per_event"] for r in runs if r["cpu_us_per_event"] > 0]
            entry[f"{s}_cpu_us"] = float(np.mean(cpus)) if cpus else 0.0
        entry["ratio"] = entry["adaptive_per_s"] / entry["minimal_per_s"]
        pairs = zip(mine["adaptive"], mine["minimal"], strict=True)
        entry["round_ratios"] = [a["drain_per_s"] / m["drain_per_s"] for a, m in pairs]
        out[str(p)] = entry
    return out


async def run(args: argparse.Namespace, workdir: Path) -> dict:
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "load_before": os.getloadavg()}
    results |= {"command": args.command, "model": MODEL, "memory_partitions": args.memory_partitions}
    results |= {"backlog": args.backlog, "partitions": args.partitions, "rounds": args.rounds, "memory": []}
    try:
        for keys in args.keys:
            for label in ("plain", "state"):
                results["memory"].append(await memory(label, keys, args, workdir))
        results["state_bytes_per_key"] = state_share(results["memory"])
        rows: list[dict] = []
        plan = [(p, i, s) for p in args.partitions for i in range(1, args.rounds + 1) for s in STRATEGIES]
        started = time.perf_counter()
        for done, (p, i, strategy) in enumerate(plan, start=1):
            rows.append(await throughput(strategy, p, i, args, workdir))
            eta = (time.perf_counter() - started) / done * (len(plan) - done)
            print(f"  {p} partition(s), round {i}, {strategy}: {done}/{len(plan)} drains, ETA {eta:.0f} s", flush=True)
        results["throughput"] = rows
        results["throughput_summary"] = summary(rows, args.partitions)
    finally:
        await drop_topics(BOOTSTRAP, f"{args.tag}-")  # whatever a failed measurement left
    results["load_after"] = os.getloadavg()
    return results


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def cpu(us: float) -> str:
    return f"{us:.1f}" if us > 0 else "n/a"


def report(r: dict) -> str:
    lines = [
        f"# How cost grows ({r['model']}, {r['started']})",
        "",
        f"Reproduce: `docker/kafka-local start && .venv/bin/{r['command']}`. Machine: {r['machine']}; the local "
        f"broker on the same machine; load average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after.",
        "",
        f"## Memory with per-key state ({r['memory_partitions']} partitions, memory store)",
        "",
        "The live worker with the `STATE` table of bench/state.py (below), fed one demo event for each of N "
        "distinct 12-byte keys, produced by key while it runs. Baseline: its VmRSS once it logged `ready:` "
        "(model loaded and warm, partitions assigned, no keys yet); after: its VmRSS once the N-th output was "
        "on the output topic and a commit had passed. Peak: its VmHWM then (start-up included). `plain` is the "
        "same worker without the state table, fed the same events: the control.",
        "",
        "| pipeline | keys | baseline RSS MiB | RSS after MiB | peak MiB | growth MiB | bytes/key | fed events/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in r["memory"]:
        lines.append(
            f"| {m['label']} | {m['keys']:,} | {mib(m['baseline_rss'])} | {mib(m['rss'])} | {mib(m['hwm'])} | "
            f"{mib(m['rss'] - m['baseline_rss'])} | {m['bytes_per_key']:,.0f} | {m['ingest_per_s']:,.0f} |"
        )
    lines += [
        "",
        "The state's share (state's bytes per key - plain's): "
        + "; ".join(
            f"**{share:,.0f} bytes per key** at {int(k):,} keys" for k, share in r["state_bytes_per_key"].items()
        )
        + ". The memory store's arrays grow by doubling (from 1,024 rows, filled when allocated), so a count "
        "just past a power of two pays for up to twice its rows; the key tables are Python dicts.",
        "",
        "```toml" + STATE.rstrip(),
        "```",
        "",
        f"## Throughput with {', '.join(map(str, r['partitions']))} partitions per worker",
        "",
        f"A backlog of {r['backlog']:,} demo events on topics of P partitions, drained by a fresh worker: sluice's "
        "(`app.cli worker`, adaptive batcher) and bench/minimal.py (the same job by hand on the same client), "
        f"alternately, {r['rounds']} round(s) each; rate by the outputs' append times, first output to last; CPU: "
        "the worker's (every thread, from `/proc`) per output while it drained. One worker process, one torch thread.",
        "",
        "| partitions | sluice events/s | minimal events/s | sluice / minimal | sluice CPU µs/event | "
        "minimal CPU µs/event |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p, s in r["throughput_summary"].items():
        each = ", ".join(f"{x:.2f}" for x in s["round_ratios"])
        lines.append(
            f"| {p} | {s['adaptive_per_s']:,.0f} | {s['minimal_per_s']:,.0f} | **{s['ratio']:.2f}** ({each}) | "
            f"{cpu(s['adaptive_cpu_us'])} | {cpu(s['minimal_cpu_us'])} |"
        )
    lines += [
        "",
        "Mean of the rounds; in brackets, each round's ratio. CPU n/a: the drain was over within one poll of the "
        "output topic's end offsets (a quarter of a second), too short to measure.",
        "",
        "Each drain:",
        "",
        "| partitions | round | worker | events/s | seconds | CPU µs/event |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    names = {"adaptive": "sluice", "minimal": "minimal"}
    for t in r["throughput"]:
        lines.append(
            f"| {t['partitions']} | {t['round']} | {names[t['strategy']]} | {t['drain_per_s']:,.0f} | "
            f"{t['seconds']:.1f} | {cpu(t['cpu_us_per_event'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=counts, default="10000,1000000", help="distinct keys of each memory measure")
    parser.add_argument("--memory-partitions", type=int, default=4, help="partitions of the memory measures' topics")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before each RSS reading (a commit)")
    parser.add_argument("--backlog", type=int, default=200_000, help="events in each throughput drain's backlog")
    parser.add_argument("--partitions", type=counts, default="1,2,4", help="partition counts of the throughput drains")
    parser.add_argument("--rounds", type=int, default=2, help="sluice and minimal drains, alternately, this many each")
    parser.add_argument("--prefix", default="bench-growth", help="prefix of the run's topic names")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if min([*args.keys, *args.partitions, args.backlog, args.rounds, args.memory_partitions], default=0) < 1:
        parser.error("--keys, --partitions, --backlog, --rounds and --memory-partitions must be at least 1")
    args.command = " ".join(["python -m bench.growth", *sys.argv[1:]])
    args.tag = f"{args.prefix}-{int(time.time())}"
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-growth-"))
    try:
        results = asyncio.run(run(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (args.out / "growth.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "growth.md").write_text(report(results))
    print(f"results: {args.out / 'growth.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
