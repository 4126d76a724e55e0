"""What per-key state costs, against the real broker, in one run.

The light model's drain rate with and without state features, memory per key, changelog bytes
per event, and the time to restore a million keys from a changelog:

    docker/kafka-local start
    .venv/bin/python -m bench.state                   # 200,000-event backlog, 2 rounds each, 1,000,000 keys
    .venv/bin/python -m bench.state --backlog 20000 --rounds 1 --keys 50000 --restore-keys 50000  # a quick check

1. Drain: a backlog of demo events (4 partitions, by record key) worked off by the live worker
   (`app.cli worker`) with fraud-mlp, plain and with a ``[pipelines.NAME.state]`` table (``STATE``),
   in alternate rounds on the same events; rate by the outputs' append times, as bench.latency.
   The MLP reads only ``features``: the state is computed, stored and written to the changelog
   for every event, and not consumed (what state costs, not what a bigger model costs).
2. Changelog bytes per event: each stateful round's changelog topic read back (keys + values).
3. Memory per key: in this process, a FeatureStep of the same spec fed ``--keys`` distinct keys.
4. Restore: ``--restore-keys`` key states written to a changelog in committed transactions,
   then ``Changelog.restore`` of every partition, timed.

Then py-spy samples one more stateful drain (not counted in the rounds; ``--no-profile`` skips
it). Results go to bench/results/state-YYYYMMDD.{md,json}; the run's topics are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer, TopicPartition

import bench.exactly_once as exactly_once
import bench.latency as latency
from app.build import FETCH_BYTES_PER_PARTITION, build_store
from app.config.state import load_state
from app.config.table import Table
from app.kafka_clients import make_consumer
from app.topics import as_connection, ensure_changelog
from bench.ceilings import drop_topics
from bench.latency import BOOTSTRAP, RESULTS, ROOT, create_topics, events, ids_of, log_tail, output_rate, read_outputs
from streams.features.spec import StateSpec
from streams.features.step import FeatureStep
from streams.kafka.changelog import Changelog
from streams.records import Partition

# Realistic fraud features over the demo events' numeric fields: the transformer's history
# sequence plus windowed aggregations (a merchant's risk score stands in for the merchant:
# demo events carry no merchant id). A key keeps 16 events, so no window sees more.
STATE = """
[pipelines.bench.state]
ttl_s = 2592000
history_events = 16
[pipelines.bench.state.features]
history = { kind = "last", n = 16, fields = ["amount", "merchant_risk", "foreign"], mask = true, \
include_current = true }
count_1h = { kind = "count", window_s = 3600, include_current = true }
spend_1h = { kind = "sum", field = "amount", window_s = 3600, include_current = true }
mean_amount_1h = { kind = "mean", field = "amount", window_s = 3600 }
std_amount_1h = { kind = "std", field = "amount", window_s = 3600 }
max_amount_24h = { kind = "max", field = "amount", window_s = 86400 }
foreign_24h = { kind = "sum", field = "foreign", window_s = 86400, include_current = true }
merchants_1h = { kind = "distinct", field = "merchant_risk", window_s = 3600, include_current = true }
gap = { kind = "since_previous" }
"""
# A sampled stack's stage: the first whose marks are all in it. The changelog flush encodes with
# streams/features/snapshot.py and sends with aiokafka: it is looked for first.
STAGES = (
    ("changelog flush: StateSpec properties (layout_id, fields) recomputed per key", ("Changelog.flush", "spec.py")),
    ("changelog flush: encode_state", ("Changelog.flush", "snapshot.py")),
    ("changelog flush: the rest (changed keys, batches, send)", ("Changelog.flush",)),
    ("features: key slots (KeyedStore.slots_for)", ("slots_for",)),
    ("features: the rest of FeatureStep.compute", ("FeatureStep.compute",)),
    ("features: the rest (StatefulInputs.apply, FeatureStep.apply, TTL sweep)", ("features/",)),
    ("model (torch)", ("torch/",)),
    ("decode (JSON to arrays)", ("codec.py",)),
    ("encode outputs", ("encode.py",)),
    ("aiokafka (fetch, produce)", ("aiokafka/",)),
)


def progress(what: str, done: int, total: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate else float("nan")
    print(f"  {what}: {done:,}/{total:,} at {rate:,.0f}/s, ETA {eta:.0f} s", flush=True)


def state_spec() -> StateSpec:
    """``STATE`` parsed by sluice's own config loader, so the in-process figures use what the worker uses."""
    return load_state(
        Table(Path(__file__), "pipelines.bench.state", tomllib.loads(STATE)["pipelines"]["bench"]["state"]),
        Path(__file__).parent,
    )


async def produce_by_key(topic: str, items: list[tuple[bytes, bytes]]) -> None:
    """``items`` to the partitions their keys hash to, as a Kafka client's default partitioner sends
    them: bench.latency.produce deals events round robin, which would split each account's
    events, and so its state, over every partition (4 keys per account, each a quarter as long)."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks=1, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in items])
    finally:
        await producer.stop()


async def read_changelog(topic: str) -> dict[str, int]:
    """Records and bytes (keys + values) of a changelog, read as a restore reads it (read_committed)."""
    consumer = make_consumer(
        as_connection(BOOTSTRAP), isolation_level="read_committed", max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(latency.PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records = size = 0
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            for batch in (await consumer.getmany(*todo, timeout_ms=500)).values():
                records += len(batch)
                size += sum(len(r.key or b"") + len(r.value or b"") for r in batch)
            todo = {tp for tp in todo if await consumer.position(tp) < end[tp]}
        return {"records": records, "bytes": size}
    finally:
        await consumer.stop()


def start_profiler(worker: subprocess.Popen[bytes], log: Path, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the worker from its ``ready:`` line on (imports and model loading not sampled)
    until it exits; idle samples are left out by py-spy itself. Blocks: run it in a thread."""
    while b"ready:" not in (log.read_bytes() if log.exists() else b"") and worker.poll() is None:
        time.sleep(0.1)
    spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-f", "raw", "-o", str(out)]
    return subprocess.Popen([*spy, "--pid", str(worker.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_shares(raw: Path) -> dict[str, float]:
    """Share of the worker's busy samples in each stage (``STAGES``), from py-spy's raw output."""
    counts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        stage = next((name for name, marks in STAGES if all(m in stack for m in marks)), "other (loop, batcher, ...)")
        counts[stage] = counts.get(stage, 0) + int(n)
    total = sum(counts.values()) or 1
    return {stage: n / total for stage, n in sorted(counts.items(), key=lambda kv: -kv[1])} | {"samples": total}


# The drains: each label's store lines (None: no state). The demo events have 10,000 accounts: the
# default cache holds them all; a cache of 2,500 makes most batches read keys back from RocksDB.
DRAINS: dict[str, str | None] = {
    "plain": None,
    "state": "",
    "rocksdb": 'store = "rocksdb"',
    "rocksdb-cache-2500": 'store = "rocksdb"\ncache_keys = 2500',
    "rekeyed": 'key_field = "account"',
}


def state_lines(store: str, directory: Path) -> str:
    lines = f"{store}\ndirectory = {json.dumps(str(directory))}" if store else ""
    return STATE.replace("history_events = 16\n", f"history_events = 16\n{lines}\n")


async def drain(label: str, items: list, wanted: set[str], args: argparse.Namespace) -> dict:
    tag, workdir = f"{args.prefix}-{label}-{int(time.time())}", args.out / "tmp"
    try:
        return await _drain(tag, label, items, wanted, workdir)
    finally:
        await drop_topics(BOOTSTRAP, f"{tag}-")
        shutil.rmtree(workdir / f"{tag}-state", ignore_errors=True)


async def _drain(tag: str, label: str, items: list, wanted: set[str], workdir: Path) -> dict:
    await create_topics([f"{tag}-in"])
    await create_topics([f"{tag}-out"], log_append=True)
    await produce_by_key(f"{tag}-in", items)
    store = DRAINS.get(label, "")
    stateful = store is not None
    # exactly_once.start_worker's ``delivery`` is lines for the pipeline's table: the state tables go there.
    lines = state_lines(store, workdir / f"{tag}-state") if store is not None else ""
    worker = exactly_once.start_worker(tag, "fraud-mlp", lines, workdir)
    raw, log = workdir / f"{tag}-profile.txt", workdir / f"{tag}.log"
    spy = asyncio.create_task(asyncio.to_thread(start_profiler, worker, log, raw)) if label == "profiled" else None
    reading = asyncio.create_task(read_outputs(f"{tag}-out", wanted, timeout_s=600))
    try:
        while not reading.done():  # a worker that dies (say, the broker restarted) ends the run now
            await asyncio.wait([reading], timeout=1)
            if worker.poll() is not None and not reading.done():
                reading.cancel()
                raise RuntimeError(f"the {label} worker exited ({worker.returncode}) mid-drain:\n{log_tail(log)}")
        outputs = reading.result()
    finally:
        latency.stop_worker(worker)  # its last commit flushes the changelog
    row: dict = {"label": label, "stateful": stateful, "store": store, "drain_per_s": output_rate(outputs)}
    row["scored"] = len(outputs)
    if spy is not None:
        (await spy).wait(timeout=60)
        row["profile"] = profile_shares(raw)
    if stateful:
        rekeyed = "rekeyed-" if "key_field" in (store or "") else ""  # app.config.default_changelog
        written = await read_changelog(f"{tag}-app.bench-{rekeyed}state-changelog")
        row |= {f"changelog_{k}": v for k, v in written.items()}
        row |= {f"changelog_{k}_per_event": v / max(1, len(outputs)) for k, v in written.items()}
    return row


def memory_per_key(spec: StateSpec, keys: int, batch: int) -> dict:
    """A FeatureStep fed ``keys`` distinct keys (one event each) over 4 partitions. Bytes per key:
    the store's numpy arrays (allocated rows: they grow by doubling) plus the Python objects of its
    key tables (dicts, key bytes, slot ints, by sys.getsizeof); the RSS delta as a cross-check."""
    gc.collect()
    rss_before = rss_bytes()
    step = FeatureStep(spec)
    rng = np.random.default_rng(3)
    partitions = [Partition("bench-memory", p) for p in range(4)]
    started, base_ms = time.perf_counter(), int(time.time() * 1000)
    for start in range(0, keys, batch):
        ids = range(start, min(keys, start + batch))
        values = rng.random((len(ids), len(spec.fields)), dtype=np.float32)
        times = base_ms + np.arange(start, ids.stop, dtype=np.int64)
        _, update = step.compute(
            [partitions[i % 4] for i in ids], [b"acct-%07d" % i for i in ids], times, values, np.arange(start, ids.stop)
        )
        step.apply(update)
        if (start // batch) % 50 == 49:
            progress("memory: keys fed", ids.stop, keys, started)
    seconds = time.perf_counter() - started
    for p in partitions:
        step.store.take_changed(p)  # as each commit's changelog flush does
    gc.collect()
    store = step.store
    arrays = sum(a.nbytes for a in (store.times, store.values, store.length, store.offset))
    tables = store.tables.values()
    python = sum(sys.getsizeof(t) + sum(sys.getsizeof(k) + sys.getsizeof(s) for k, s in t.items()) for t in tables)
    rss_delta = rss_bytes() - rss_before
    return {
        "keys": len(store),
        "key_bytes": len(b"acct-0000000"),
        "capacity": spec.capacity,
        "fields": len(spec.fields),
        "slots_allocated": len(store.length),
        "numpy_bytes_per_key": arrays / keys,
        "python_bytes_per_key": python / keys,
        "bytes_per_key": (arrays + python) / keys,
        "rss_delta_per_key": rss_delta / keys,
        "fed_per_s": keys / seconds,
    }


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def write_changelog(
    spec: StateSpec, topic: str, keys: int, events_per_key: int, txn_keys: int = 100_000
) -> tuple[int, float]:
    """``keys`` key states of ``events_per_key`` events each (a minute apart) written by
    ``Changelog.flush`` itself, the worker's own code, in committed transactions; returns bytes and seconds.
    The states are set in a store directly: feeding 16 events per key through compute is slower."""
    step = FeatureStep(spec)
    store, changelog = step.store, Changelog(step, topic, new_consumer=lambda: None)
    times = int(time.time() * 1000) - 60_000 * np.arange(events_per_key, 0, -1, dtype=np.int64)
    rng, started = np.random.default_rng(4), time.perf_counter()
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id=f"{topic}-writer", max_batch_size=1 << 20)
    await producer.start()
    try:
        for first in range(0, keys, txn_keys):
            ids = range(first, min(keys, first + txn_keys))
            partitions = [Partition(f"{topic}-in", i % latency.PARTITIONS) for i in ids]
            slots = store.slots_for(partitions, [b"acct-%07d" % i for i in ids])  # marks them changed
            store.times[slots, -events_per_key:] = times
            store.values[slots, -events_per_key:] = rng.random((len(ids), events_per_key, len(spec.fields)))
            store.length[slots], store.offset[slots] = events_per_key, np.arange(first, ids.stop)
            step.latest_ms |= dict.fromkeys(partitions, int(times[-1]))
            async with producer.transaction():
                for partition in sorted(set(partitions)):
                    await changelog.flush(partition, producer)
            progress("restore: key states written", ids.stop, keys, started)
    finally:
        await producer.stop()
    return changelog.bytes_written, time.perf_counter() - started


async def restore(spec: StateSpec, keys: int, events_per_key: int, prefix: str, workdir: Path) -> dict:
    """Seconds for ``Changelog.restore`` of every partition of a changelog holding ``keys`` keys,
    with a restore consumer set up as the worker sets up its own: into the memory store; into
    RocksDB databases from nothing; and again into those databases, as a restarted worker does
    (it reads only what the changelog gained since its local copy: nothing, here)."""
    tag = f"{prefix}-restore-{int(time.time())}"
    await create_topics([f"{tag}-in"])
    await ensure_changelog(BOOTSTRAP, f"{tag}-changelog", f"{tag}-in", create=True)  # compacted, as the worker makes it
    directory = workdir / f"{tag}-rocksdb"
    rocks = dataclasses.replace(spec, store="rocksdb", directory=directory)
    try:
        written, writing_s = await write_changelog(spec, f"{tag}-changelog", keys, events_per_key)
        result: dict = {
            "keys_written": keys,
            "events_per_key": events_per_key,
            "bytes": written,
            "bytes_per_key": written / keys,
            "flushed_keys_per_s": keys / writing_s,
        }
        gc.collect()
        rss_before = rss_bytes()
        for label in ("rocksdb", "rocksdb_restart"):
            store = build_store(rocks, live=True, changelog_topic=f"{tag}-changelog")
            result[label] = await timed_restore(FeatureStep(rocks, store), tag, keys, label)
            result[label]["rss_delta_mib"] = (rss_bytes() - rss_before) / 2**20  # its databases still open
            store.close()
            result[label]["disk_bytes_per_key"] = sum(f.stat().st_size for f in directory.rglob("*")) / keys
        result["memory"] = await timed_restore(FeatureStep(spec), tag, keys, "memory")
    finally:
        await drop_topics(BOOTSTRAP, f"{tag}-")
        shutil.rmtree(directory, ignore_errors=True)
    return result


async def timed_restore(step: FeatureStep, tag: str, keys: int, label: str) -> dict:
    new_consumer = lambda: make_consumer(  # noqa: E731
        as_connection(BOOTSTRAP),
        client_id="bench-restore",
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
    )
    changelog = Changelog(step, f"{tag}-changelog", new_consumer)
    started = time.perf_counter()

    async def watch() -> None:
        while True:
            await asyncio.sleep(5)
            print(f"  restore ({label}): {time.perf_counter() - started:.0f} s", flush=True)

    watcher = asyncio.create_task(watch())
    try:
        restored = await changelog.restore({Partition(f"{tag}-in", p) for p in range(latency.PARTITIONS)})
    finally:
        watcher.cancel()
    seconds = time.perf_counter() - started
    print(f"  restore ({label}): {restored:,} keys in {seconds:.1f} s ({keys / seconds:,.0f} keys/s)", flush=True)
    return {"keys_restored": restored, "seconds": seconds, "keys_per_s": keys / seconds}


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    memory_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    python = sys.version.split()[0]
    return f"{os.cpu_count()} CPUs ({model}), {memory_gb:.0f} GiB, Python {python}, main at {commit.strip()}"


async def run(args: argparse.Namespace) -> dict:
    spec = state_spec()
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "load_before": os.getloadavg()}
    results |= {"command": args.command, "backlog": args.backlog, "partitions": args.partitions, "rounds": []}
    items = events(args.backlog, seed=1)
    wanted = ids_of(items)
    results["input_bytes_per_event"] = sum(len(k) + len(v) for k, v in items) / len(items)
    plan = [label for _ in range(args.rounds) for label in DRAINS]
    started = time.perf_counter()
    for i, label in enumerate(plan, start=1):
        row = await drain(label, items, wanted, args) | {"round": (i - 1) // len(DRAINS) + 1}
        stateful = row["stateful"]
        results["rounds"].append(row)
        log = f", changelog {row['changelog_bytes_per_event']:.0f} B/event" if stateful else ""
        eta = (time.perf_counter() - started) / i * (len(plan) - i)
        print(
            f"  round {row['round']} {label}: drains {args.backlog:,} at {row['drain_per_s']:,.0f}/s "
            f"({row['scored']:,} scored{log}); {i}/{len(plan)} drains, ETA {eta:.0f} s",
            flush=True,
        )
    rates = {k: [r["drain_per_s"] for r in results["rounds"] if r["label"] == k] for k in DRAINS}
    results["ratios"] = {k: float(np.mean(rates[k]) / np.mean(rates["plain"])) for k in DRAINS if k != "plain"}
    results["round_ratios"] = {
        k: [b / a for a, b in zip(rates["plain"], rates[k], strict=True)] for k in DRAINS if k != "plain"
    }
    results["ratio"] = results["ratios"]["state"]
    if args.profile:
        results["profile"] = (await drain("profiled", items, wanted, args))["profile"]
        print(
            "  profile of a stateful drain: "
            + ", ".join(f"{k} {v:.0%}" for k, v in results["profile"].items() if k != "samples"),
            flush=True,
        )
    results["memory"] = memory_per_key(spec, args.keys, args.batch)
    print(f"  memory: {results['memory']['bytes_per_key']:,.0f} B/key", flush=True)
    results["restore"] = await restore(spec, args.restore_keys, args.restore_events, args.prefix, args.out / "tmp")
    results["load_after"] = os.getloadavg()
    return results


def report(r: dict) -> str:
    m, s = r["memory"], r["restore"]
    lines = [
        f"# Per-key state: what it costs (fraud-mlp, {r['started']})",
        "",
        f"Reproduce: `docker/kafka-local start && .venv/bin/{r['command']}`. Machine: "
        f"{r['machine']}; the local broker on the same machine; load average {r['load_before'][0]:.1f} before, "
        f"{r['load_after'][0]:.1f} after. The machine is shared with another engineer's tests: drain rates "
        "vary from one minute to the next, hence the alternate rounds.",
        "",
        f"## Drain rate (backlog {r['backlog']:,} demo events, {r['partitions']} partitions, 1 torch thread)",
        "",
        "The state pipeline declares these features (`STATE` in bench/state.py); fraud-mlp reads only `features`, "
        "so every feature is computed, stored and written to the changelog, and none is consumed:",
        "",
        "```toml" + STATE.rstrip(),
        "```",
        "",
        "| round | pipeline | drain events/s | changelog records/event | changelog bytes/event |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for row in r["rounds"]:
        log = (row["changelog_records_per_event"], row["changelog_bytes_per_event"]) if row["stateful"] else None
        lines.append(
            f"| {row['round']} | {row['label']} | {row['drain_per_s']:,.0f} | "
            + (f"{log[0]:.3f} | {log[1]:.1f} |" if log else "| |")
        )
    verdict = "meets" if r["ratio"] >= 0.5 else "MISSES"
    each = r["round_ratios"]
    lines += [
        "",
        f"State (memory store) / plain, mean of the rounds: **{r['ratio']:.2f}** (each round: "
        f"{', '.join(f'{x:.2f}' for x in each['state'])}); the issue's bar is 0.5: this {verdict} it.",
        "",
    ]
    for label in [k for k in r["ratios"] if k != "state"]:
        rounds = ", ".join(f"{x:.2f}" for x in each[label])
        lines.append(f"- `{label}` / plain: **{r['ratios'][label]:.2f}** (each round: {rounds})")
    lines += [
        "",
        '`rocksdb`: the same features with `store = "rocksdb"` (its default cache of 100,000 keys holds the demo\'s '
        "10,000 accounts: what it adds is writing each commit's changed keys to the local databases); "
        "`rocksdb-cache-2500`: a cache of a quarter of the accounts, so most batches read keys back from RocksDB "
        "and evict others. `rekeyed`: the memory store keyed by the event's `account` field "
        "(`key_field`), so every event first goes through the re-keying stage and its repartition topic "
        "(transactions every 100 ms), in the same process.",
        "",
        f"Changelog: one record per key changed since the previous commit (every `commit_interval_ms`, 1 s by "
        f"default), so records per event fall as the drain rate grows; a demo event is "
        f"{r['input_bytes_per_event']:.0f} bytes (key + value) on the input topic.",
        "",
    ]
    if "profile" in r:
        lines += [
            f"py-spy on one more stateful drain ({r['profile']['samples']:,} busy samples, from the worker's "
            "`ready:` line on; not counted above):",
            "",
            "| stage | share of samples |",
            "| --- | ---: |",
        ]
        lines += [f"| {k} | {v:.0%} |" for k, v in r["profile"].items() if k != "samples"] + [""]
    lines += [
        f"## Memory per key ({m['keys']:,} distinct {m['key_bytes']}-byte keys, one event each, in process)",
        "",
        f"{m['bytes_per_key']:,.0f} bytes per key: {m['numpy_bytes_per_key']:,.0f} in the store's numpy arrays "
        f"({m['slots_allocated']:,} rows allocated: {m['capacity']} events x {m['fields']} fields, doubling as it "
        f"grows) + {m['python_bytes_per_key']:,.0f} of Python key tables (dict, key bytes, slot ints, by "
        f"sys.getsizeof). The process RSS grew by {m['rss_delta_per_key']:,.0f} bytes per key. Fed at "
        f"{m['fed_per_s']:,.0f} keys/s (compute + apply, batches of 4096).",
        "",
        f"## Restore ({s['keys_written']:,} keys of {s['events_per_key']} events, {r['partitions']} partitions)",
        "",
        f"The changelog held {s['bytes'] / 2**20:,.0f} MiB ({s['bytes_per_key']:.0f} bytes per key), written by "
        f"`Changelog.flush` in committed transactions of 100,000 keys at {s['flushed_keys_per_s']:,.0f} keys/s. "
        "`Changelog.restore` of every partition:",
        "",
        "| into | seconds | keys/s |",
        "| --- | ---: | ---: |",
        f"| the memory store | **{s['memory']['seconds']:.1f}** | {s['memory']['keys_per_s']:,.0f} |",
        f"| RocksDB, from nothing | **{s['rocksdb']['seconds']:.1f}** | {s['rocksdb']['keys_per_s']:,.0f} |",
        f"| RocksDB, restarted on its local copy (it reads only what the changelog gained since: nothing here) | "
        f"**{s['rocksdb_restart']['seconds']:.1f}** | n/a |",
        "",
        f"RocksDB on disk: {s['rocksdb']['disk_bytes_per_key']:,.0f} bytes per key (before compaction). The "
        f"process's RSS grew by {s['rocksdb']['rss_delta_mib']:,.0f} MiB restoring {s['keys_written']:,} keys into "
        "it: RocksDB's memtables and block cache, which do not grow with the keys (the memory store holds every "
        "key in memory: see above).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=200_000, help="events in each drain's backlog")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the input and changelog topics")
    parser.add_argument("--rounds", type=int, default=2, help="plain and stateful drains, alternately, this many each")
    parser.add_argument("--keys", type=int, default=1_000_000, help="distinct keys of the memory measure")
    parser.add_argument("--batch", type=int, default=4096, help="events per compute of the memory measure")
    parser.add_argument("--restore-keys", type=int, default=1_000_000, help="keys in the changelog to restore")
    parser.add_argument("--restore-events", type=int, default=16, help="events per restored key (16: a full history)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the py-spy'd stateful drain")
    parser.add_argument("--prefix", default="bench-state", help="prefix of the run's topic names")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.command = " ".join(["python -m bench.state", *sys.argv[1:]])
    (args.out / "tmp").mkdir(parents=True, exist_ok=True)
    # bench.latency's helpers (topics, produce, read_outputs) and the worker configs of
    # bench.exactly_once read the partition count from these module globals.
    latency.PARTITIONS = exactly_once.PARTITIONS = args.partitions
    results = asyncio.run(run(args))
    name = f"state-{time.strftime('%Y%m%d')}"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(report(results))
    print(f"results: {args.out / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
