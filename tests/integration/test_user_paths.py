"""The documented user paths the rest of the suite did not take end to end, taken as a user would.

Each test runs the real ``sluice`` CLI (or ``docker/demo``, or ``faust -A app.main``) as a
subprocess against the real broker, with the options the README documents, and checks what a
user would look at: the lines printed, the records on a topic, the rows in a file. Model
formats are in ``test_model_formats.py``; this file covers the commands' other options, the
shipped config files, the demo and the endpoints' remaining answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import torch
from aiokafka import AIOKafkaProducer, ConsumerRecord

from app.demo_events import DemoEvent, demo_events
from app.topics import ensure_topics, partitions_of
from tests.integration.kafka_helpers import (
    ROOT,
    free_port,
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    sluice,
    stop_gracefully,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)
from tests.integration.test_compression import damage, send_batches

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def produce_stamped(bootstrap: str, topic: str, events: list[DemoEvent], timestamp_ms: int) -> None:
    """Demo events keyed by account, all with this record timestamp (what --from-timestamp compares)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send(topic, e.value, key=e.key, timestamp_ms=timestamp_ms) for e in events]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def copy_stamped(bootstrap: str, topic: str, records: list[ConsumerRecord], age_ms: int) -> None:
    """``records`` written again to ``topic`` (same key and partition), stamped ``age_ms`` ago."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        stamp = now_ms() - age_ms
        sent = [
            await producer.send(topic, r.value, key=r.key, partition=r.partition, timestamp_ms=stamp) for r in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sluice ARGS`` off the event loop (a worker or a consumer may be running on it meanwhile)."""
    return await asyncio.to_thread(run_sluice, *args, timeout=240, env=env)


def ids_of(records: list[ConsumerRecord]) -> list[str]:
    return [orjson.loads(r.value)["id"] for r in records]


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line]


def get_json(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, orjson.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def served(reply: tuple[int, dict]) -> tuple[int, str, str, str]:
    """The status and the champion of a GET /pipelines/NAME/model (which shows every role too)."""
    status, page = reply
    return status, page["pipeline"], page["model"], page["version"]


def renamed_copy(shipped: str, directory: Path, renames: dict[str, str]) -> Path:
    """A shipped config file with its topic names and app id replaced, so a test does not share them."""
    text = (ROOT / "config" / shipped).read_text()
    for old, new in renames.items():
        assert old in text, f"{old!r} is not in config/{shipped}"
        text = text.replace(old, new)
    path = directory / shipped
    path.write_text(text)
    return path


def start_faust_worker(config: Path, log_path: Path, datadir: Path, web_port: int) -> subprocess.Popen[bytes]:
    """`faust -A app.main worker`, the config from $SLUICE_CONFIG, as the README says it runs."""
    faust = str(Path(sys.executable).parent / "faust")
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [faust, "-A", "app.main", "--datadir", str(datadir), "worker", "-l", "info", "--web-port", str(web_port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SLUICE_CONFIG": str(config), "PYTHONUNBUFFERED": "1"},
        )


def start_watch(*args: str) -> subprocess.Popen[str]:
    """`sluice ARGS` in the background, its output to read line by line."""
    return subprocess.Popen(sluice(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---------------------------------------------------------------------------------------------
# make demo, the shipped configs, faust -A app.main worker, /ready of a worker with no partition


def test_the_demo_runs_a_worker_produces_and_shows_predictions_arriving(kafka, tmp_path):
    """`make demo` (docker/demo): ready line, predictions as they arrive, the latency summary.

    The shipped config/sluice.toml with its topics and app id renamed; its broker is one that
    does not answer, and $SLUICE_BROKER points at the real one, as the README says to."""
    suffix = unique("demo")
    output = f"fraud-scores-{suffix}"
    config = renamed_copy(
        "sluice.toml",
        tmp_path,
        {
            '"transactions"': f'"transactions-{suffix}"',
            '"fraud-scores"': f'"{output}"',
            '"transactions-dead-letters"': f'"transactions-dead-letters-{suffix}"',
            '"fraud-scores-backfill"': f'"fraud-scores-backfill-{suffix}"',
            'id = "sluice"': f'id = "{suffix}"',
            'broker = "kafka://127.0.0.1:9092"': 'broker = "kafka://127.0.0.1:9"',
        },
    )
    count = 1500
    env = {
        **os.environ,
        "SLUICE_CONFIG": str(config),
        "SLUICE_BROKER": kafka,
        "COUNT": str(count),
        "RATE": "300",  # 5 s of traffic: the demo's `watch --count 20` starts while it flows
        "WEB_PORT": str(free_port()),
    }
    result = subprocess.run(
        [str(ROOT / "docker" / "demo")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert "demo: pipeline fraud: ready: 4 partition(s) assigned, " in out
    assert f"id                    score  model  source  latency  (from {output})" in out
    shown = [line for line in out.splitlines() if line.startswith("tx-1-")]
    assert len(shown) == 20, out
    assert all("fraud-mlp v2" in line and f"transactions-{suffix}[" in line for line in shown), shown
    assert f"{output}: {count} predictions; latency measured by the worker (event time to scored): p50 " in out
    assert "slowest 1% (15) by when they happened in the run: " in out
    assert re.search(r"demo: CPU over [0-9.]+s \(\d+ cores\), in cores: worker [0-9.]+, load generator", out), out


async def test_the_shipped_transformer_config_serves_the_heavy_model(kafka, tmp_path):
    """`sluice --config config/transformer.toml worker -l info`, fed by `sluice produce`."""
    suffix = unique("deep")
    output = f"fraud-scores-deep-{suffix}"
    config = renamed_copy(
        "transformer.toml",
        tmp_path,
        {
            '"transactions"': f'"transactions-{suffix}"',
            '"fraud-scores-deep"': f'"{output}"',
            '"transactions-dead-letters-deep"': f'"transactions-dead-letters-deep-{suffix}"',
            'id = "sluice-transformer"': f'id = "{suffix}"',
        },
    )
    count = 60
    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline fraud-deep: ready"):
        ok(await cli("--config", str(config), "produce", "-n", str(count), "--seed", "7"))
        outputs = await read_topic(kafka, output, expected=count, idle=1)
    bodies = [orjson.loads(r.value) for r in outputs]
    assert sorted(b["id"] for b in bodies) == sorted(e.id for e in demo_events(count, seed=7))
    assert {(b["model"], b["model_version"]) for b in bodies} == {("fraud-transformer", "2")}


async def test_faust_runs_the_same_worker_and_a_worker_with_no_partition_is_ready(kafka, tmp_path):
    """`faust -A app.main worker` joins the same group as `sluice worker`; on a one-partition
    topic one of them has none and still answers /ready 200; when the other stops, it scores."""
    topics = topics_for(unique("faustcli"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="fa", partitions=1, **topics)
    sluice_port, faust_port = free_port(), free_port()
    faust_log = tmp_path / "faust.log"
    ready = "pipeline fa: ready"
    with running_worker(config, tmp_path / "sluice.log", ready_text=ready, web_port=sluice_port) as first:
        faust = start_faust_worker(config, faust_log, tmp_path / "faust-data", faust_port)
        try:
            wait_for_log(faust_log, ready, proc=faust, timeout=90)
            deadline = time.monotonic() + 60
            while True:  # both in the group, the rebalance settled: one partition between two workers
                answers = [await asyncio.to_thread(get_json, p, "/ready") for p in (sluice_port, faust_port)]
                held = sorted(body["pipelines"]["fa"]["partitions"] for _, body in answers)
                if [status for status, _ in answers] == [200, 200] and held == [0, 1]:
                    break
                assert time.monotonic() < deadline, answers
                await asyncio.sleep(0.3)
            for _, body in answers:
                assert body["ready"] is True and body["pipelines"]["fa"]["ready"] is True
            assert stop_gracefully(first) == 0
            while (await asyncio.to_thread(get_json, faust_port, "/ready"))[1]["pipelines"]["fa"]["partitions"] != 1:
                assert time.monotonic() < deadline + 60 and faust.poll() is None, faust_log.read_text()[-3000:]
                await asyncio.sleep(0.3)
            events = list(demo_events(30, seed=61))
            await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events])
            outputs = await read_topic(kafka, topics["output_topic"], expected=len(events))
        finally:
            exit_status = stop_gracefully(faust) if faust.poll() is None else faust.returncode
    assert exit_status == 0, faust_log.read_text()[-3000:]
    assert sorted(ids_of(outputs)) == sorted(e.id for e in events)


# ---------------------------------------------------------------------------------------------
# sluice produce


async def test_produce_writes_the_seeds_events_to_the_named_topic_at_the_given_rate(kafka, tmp_path):
    """`sluice produce -n N -r RATE --seed S -t TOPIC`: to that topic (created), the events of that
    seed keyed by account, the last no sooner than N / RATE seconds after the start (open loop)."""
    topics = topics_for(unique("produce"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="pr", partitions=2, **topics)
    elsewhere = unique("produce-elsewhere")
    count, rate = 30, 100.0
    launched = now_ms()
    result = ok(
        await cli("--config", str(config), "produce", "-n", str(count), "-r", str(rate), "--seed", "5", "-t", elsewhere)
    )
    assert f"produced to {elsewhere}: {count}/{count}" in result.stderr
    records = await read_topic(kafka, elsewhere, expected=count, idle=0.5)
    expected = {(e.key, orjson.loads(e.value)["id"]) for e in demo_events(count, seed=5)}
    assert {(r.key, orjson.loads(r.value)["id"]) for r in records} == expected
    assert len(records) == count
    # Open loop: event n is due n / rate after the producer started, so the last is sent no sooner
    # than count / rate after the command was launched, however late the first ones were.
    assert max(r.timestamp for r in records) >= launched + count / rate * 1000 - 1, "faster than --rate"
    assert not await partitions_of(kafka, topics["input_topic"]), "the config's input is not even created"


# ---------------------------------------------------------------------------------------------
# sluice watch


async def test_watch_prints_predictions_and_dead_letters_from_where_it_is_told(kafka, tmp_path):
    """`sluice watch` with --from-beginning, --since, -n, -s, --summary and -t, on a worker's outputs."""
    topics = topics_for(unique("watch"))
    inp, out, dlq = topics["input_topic"], topics["output_topic"], topics["dead_letter_topic"]
    config = write_config(tmp_path, bootstrap=kafka, pipeline="wa", partitions=2, **topics)
    watch = ("--config", str(config), "watch")
    old, fresh, later = list(demo_events(40, seed=71)), list(demo_events(30, seed=72)), list(demo_events(5, seed=73))
    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline wa: ready"):
        # An hour old by their timestamps (scored late, as the budget says), then two bad events, then fresh ones.
        await produce_stamped(kafka, inp, old, now_ms() - HOUR_MS)
        await produce_raw(kafka, inp, [(b"k", b"not json"), (b"k", b"[]")])
        await produce_raw(kafka, inp, [(e.key, e.value) for e in fresh])
        total = len(old) + len(fresh)
        predictions = await read_topic(kafka, out, expected=total)
        await read_topic(kafka, dlq, expected=2)

        everything = ok(await cli(*watch, "--from-beginning", "-n", str(total))).stdout.splitlines()
        assert everything[0].split() == ["id", "score", "model", "source", "latency", "(from", f"{out})"]
        assert sorted(line.split()[0] for line in everything[1:]) == sorted(e.id for e in old + fresh)
        for line in everything[1:]:
            _, score, model, version, source, latency, ms = line.split()
            assert 0 <= float(score) <= 1 and (model, version, ms) == ("fraud-mlp", "v2", "ms"), line
            assert source.startswith(f"{inp}[") and int(latency) >= 0, line

        # --since is about when records were appended (their timestamps): the worker stamps its outputs
        # as it produces them, so the same predictions go to a topic of their own, the old ones stamped
        # an hour ago, as a topic that has been receiving for an hour holds them.
        appended = unique("watch-appended")
        await ensure_topics(kafka, [appended], create=True, partitions=2)
        fresh_ids = {e.id for e in fresh}
        await copy_stamped(kafka, appended, [r for r in predictions if ids_of([r])[0] not in fresh_ids], HOUR_MS)
        await copy_stamped(kafka, appended, [r for r in predictions if ids_of([r])[0] in fresh_ids], 0)
        since = ok(await cli(*watch, "-t", appended, "--since", "600", "-n", str(len(fresh)), "-s", "60"))
        assert sorted(line.split()[0] for line in since.stdout.splitlines()[1:]) == sorted(fresh_ids)

        summary = ok(await cli(*watch, "--from-beginning", "-n", str(total), "--summary")).stdout.splitlines()
        assert len(summary) == 1, summary  # under 100 predictions: no line about the slowest 1%
        prefix = f"{out}: {total} predictions; latency measured by the worker (event time to scored): p50 "
        assert summary[0].startswith(prefix), summary
        max_ms, over = re.search(r"max (\d+) ms; (\d+) over the 50 ms budget$", summary[0]).groups()  # type: ignore[union-attr]
        assert int(max_ms) >= HOUR_MS and int(over) == len(old), "the old events were an hour late"

        letters = ok(await cli(*watch, "-t", dlq, "--from-beginning", "-n", "2")).stdout.splitlines()
        assert [line.split(":")[0] for line in letters[1:]] == ["DEAD LETTER InvalidJSON", "DEAD LETTER NotAnObject"]

        idle = ok(await cli(*watch, "-s", "1")).stdout.splitlines()
        assert len(idle) == 1, "from the end by default: nothing new, nothing shown"

        # By default from the end: what arrives after it started, and nothing before.
        following = start_watch(*watch, "-n", str(len(later)), "-s", "90")
        assert following.stdout is not None
        header = await asyncio.to_thread(following.stdout.readline)  # printed once it sits at the end
        assert header.startswith("id "), (header, following.stderr.read() if following.stderr else "")
        await produce_raw(kafka, inp, [(e.key, e.value) for e in later])
        rest, err = await asyncio.to_thread(following.communicate, timeout=120)
    assert following.returncode == 0, err
    assert sorted(line.split()[0] for line in rest.splitlines()) == sorted(e.id for e in later)


async def test_watch_names_each_record_it_cannot_decode(kafka, tmp_path):
    """README: `sluice watch` prints an UNDECODABLE line for each record of a damaged batch."""
    topics = topics_for(unique("watchdamaged"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="wd", partitions=1, **topics)
    topic = topics["output_topic"]
    values = [orjson.dumps({"id": f"r-{n}", "prediction": 0.5, "latency_ms": 1}) for n in range(30)]
    await ensure_topics(kafka, [topic], create=True, partitions=1)
    await send_batches(kafka, topic, 0, [values[:10], values[10:20], values[20:]])
    damage(topic, 0, 10, keep_crc_valid=False)
    shown = ok(await cli("--config", str(config), "watch", "--from-beginning", "-n", "30", "-s", "60")).stdout
    lines = shown.splitlines()[1:]
    assert [line.split()[0] for line in lines[:10] + lines[20:]] == [f"r-{n}" for n in (*range(10), *range(20, 30))]
    assert [line.split(":")[0] for line in lines[10:20]] == [f"UNDECODABLE {topic}[0]@{n}" for n in range(10, 20)]


# ---------------------------------------------------------------------------------------------
# sluice backfill


def two_pipelines(tmp_path: Path, kafka: str, first: dict[str, str], second: dict[str, str], weights: Path) -> Path:
    """Pipeline `first` serves the demo MLP; pipeline `second` a candidate: the MLP's class with other weights."""
    config = write_config(tmp_path, bootstrap=kafka, pipeline="first", partitions=2, **first)
    config.write_text(
        config.read_text()
        + f"""
[pipelines.second]
input_topics = ["{second["input_topic"]}"]
output_topic = "{second["output_topic"]}"
dead_letter_topic = "{second["dead_letter_topic"]}"

[pipelines.second.model]
class = "models.demo:FraudMLP"
state_dict = "{weights}"
name = "candidate"
version = "1"

[pipelines.second.features]
inputs = [{{ field = "features", shape = [32] }}]
"""
    )
    return config


async def test_a_backfill_with_no_options_and_one_of_another_pipeline_with_a_demo_model_to_parquet(kafka, tmp_path):
    """`sluice backfill` alone: the first pipeline, its model, to its backfill topic, keyed by source
    position, its dead letters to its dead-letter topic. `sluice backfill -p second -m fraud-mlp
    --sink file:scores.parquet`: the other pipeline, scored by a demo model by name, to Parquet."""
    first, second = topics_for(unique("bfirst")), topics_for(unique("bsecond"))
    weights = torch.load(ROOT / "models" / "weights" / "fraud-mlp.pt", weights_only=True)
    weights["layers.4.bias"] = weights["layers.4.bias"] + 1.0
    torch.save(weights, tmp_path / "candidate.pt")
    config = two_pipelines(tmp_path, kafka, first, second, tmp_path / "candidate.pt")
    first_events, second_events = list(demo_events(20, seed=81)), list(demo_events(15, seed=82))
    for topics, partitions in ((first, 2), (second, 2)):
        await ensure_topics(kafka, list(topics.values()), create=True, partitions=partitions)
    await produce_raw(kafka, first["input_topic"], [(e.key, e.value) for e in first_events] + [(b"k", b"oops")])
    await produce_raw(kafka, second["input_topic"], [(e.key, e.value) for e in second_events])
    state = str(tmp_path / "state")

    result = ok(await cli("--config", str(config), "backfill", "--state-dir", state))
    assert "backfill done: 21 events, 20 predictions" in result.stderr, result.stderr
    backfilled = await read_topic(kafka, f"{first['output_topic']}-backfill", expected=20, idle=0.5)
    assert sorted(ids_of(backfilled)) == sorted(e.id for e in first_events)
    for record in backfilled:
        body = orjson.loads(record.value)
        src = body["source"]
        assert record.key == f"{src['topic']}:{src['partition']}:{src['offset']}".encode()
        assert (src["topic"], body["model"]) == (first["input_topic"], "fraud-mlp")
    (letter,) = await read_topic(kafka, first["dead_letter_topic"], expected=1, idle=0.5)
    assert orjson.loads(letter.value)["error"] == "InvalidJSON"

    scores = tmp_path / "scores.parquet"
    own = tmp_path / "own.jsonl"
    ok(
        await cli(
            "--config",
            str(config),
            "backfill",
            "-p",
            "second",
            "-m",
            "fraud-mlp",
            "--sink",
            f"file:{scores}",
            "--state-dir",
            state,
        )
    )
    ok(await cli("--config", str(config), "backfill", "-p", "second", "--sink", f"file:{own}", "--state-dir", state))
    table = pq.read_table(scores).to_pydict()
    assert sorted(table["id"]) == sorted(e.id for e in second_events)
    assert set(table["model"]) == {"fraud-mlp"}
    candidate = {b["id"]: b for b in read_jsonl(own)}
    assert {b["model"] for b in candidate.values()} == {"candidate"}
    for event_id, prediction in zip(table["id"], table["prediction"], strict=True):
        assert abs(prediction - candidate[event_id]["prediction"]) > 1e-3, (
            "-m scored with the demo model, not the config's"
        )


def test_the_readmes_backfill_example_with_another_model_runs_on_the_shipped_config(kafka, tmp_path):
    suffix = unique("readme")
    config = renamed_copy(
        "sluice.toml",
        tmp_path,
        {
            '"transactions"': f'"transactions-{suffix}"',
            '"fraud-scores"': f'"fraud-scores-{suffix}"',
            '"transactions-dead-letters"': f'"transactions-dead-letters-{suffix}"',
            '"fraud-scores-backfill"': f'"fraud-scores-backfill-{suffix}"',
            'id = "sluice"': f'id = "{suffix}"',
        },
    )
    ok(run_sluice("--config", str(config), "produce", "-n", "20"))
    scores = tmp_path / "scores.parquet"
    candidate = tmp_path / "candidate.pt"  # the README's candidate: new weights for the pipeline's class
    shutil.copy(ROOT / "models" / "weights" / "fraud-mlp.pt", candidate)
    args = ("-p", "fraud", "-m", f"models.demo:FraudMLP={candidate}", "--sink", f"file:{scores}")
    ok(run_sluice("--config", str(config), "backfill", *args, "--state-dir", str(tmp_path / "state")))
    assert pq.read_table(scores).num_rows == 20


async def test_a_backfill_from_a_timestamp_scores_only_what_came_after(kafka, tmp_path):
    """`--from-timestamp` in milliseconds since the epoch."""
    topics = topics_for(unique("fromts"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="ts", partitions=2, **topics)
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=2)
    old, new = list(demo_events(30, seed=91)), list(demo_events(20, seed=92))
    await produce_stamped(kafka, topics["input_topic"], old, now_ms() - HOUR_MS)
    await produce_stamped(kafka, topics["input_topic"], new, now_ms())
    out = tmp_path / "later.jsonl"
    since = str(now_ms() - HOUR_MS // 2)
    args = ("--from-timestamp", since, "--sink", f"file:{out}", "--state-dir", str(tmp_path / "state"))
    ok(await cli("--config", str(config), "backfill", *args))
    assert sorted(b["id"] for b in read_jsonl(out)) == sorted(e.id for e in new)


async def test_a_backfill_split_in_parts_writes_each_position_once_in_its_own_files(kafka, tmp_path):
    """`--run-id R --part 1/2` and `--part 2/2`, run side by side: every Nth partition from the Kth,
    files NAME.partKofN.jsonl, each part checkpointed done."""
    topics = topics_for(unique("parts"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="pa", partitions=3, **topics)
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=3)
    events = list(demo_events(90, seed=93))
    await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events])
    out, state = tmp_path / "scores.jsonl", tmp_path / "state"
    common = (
        "--config",
        str(config),
        "backfill",
        "--run-id",
        "split-1",
        "--sink",
        f"file:{out}",
        "--state-dir",
        str(state),
    )
    results = await asyncio.gather(*(cli(*common, "--part", part) for part in ("1/2", "2/2")))
    for result in results:
        ok(result)
    parts = {k: read_jsonl(tmp_path / f"scores.part{k}of2.jsonl") for k in (1, 2)}
    assert not out.exists()
    assert {b["source"]["partition"] for b in parts[1]} == {0, 2}
    assert {b["source"]["partition"] for b in parts[2]} == {1}
    positions = [(b["source"]["partition"], b["source"]["offset"]) for k in (1, 2) for b in parts[k]]
    assert len(positions) == len(set(positions)) == len(events)
    assert sorted(b["id"] for k in (1, 2) for b in parts[k]) == sorted(e.id for e in events)
    for k in (1, 2):
        assert json.loads((state / f"split-1.part{k}of2.json").read_text())["done"]


async def test_a_later_start_warms_per_key_state_and_emits_the_features_to_parquet(kafka, tmp_path):
    """`--from-timestamp ISO --emit-features --sink file:X.parquet` on the transformer's pipeline: only
    the later events, each with the `feature.history` column a run from offset zero gives it."""
    topics = topics_for(unique("warm"))
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="deep",
        partitions=2,
        demo="fraud-transformer",
        app_id=unique("warm-app"),
        **topics,
    )
    old, new = list(demo_events(200, seed=94)), list(demo_events(200, seed=94, start=200))
    await ensure_topics(kafka, list(topics.values()), create=True, partitions=2)
    await produce_stamped(kafka, topics["input_topic"], old, now_ms() - HOUR_MS)
    await produce_stamped(kafka, topics["input_topic"], new, now_ms())
    state = str(tmp_path / "state")
    full, later = tmp_path / "full.jsonl", tmp_path / "later.parquet"
    ok(
        await cli(
            "--config", str(config), "backfill", "--emit-features", "--sink", f"file:{full}", "--state-dir", state
        )
    )
    iso = datetime.fromtimestamp((now_ms() - HOUR_MS // 2) / 1000).isoformat(timespec="seconds")
    result = ok(
        await cli(
            *("--config", str(config), "backfill", "--from-timestamp", iso, "--emit-features"),
            *("--sink", f"file:{later}", "--state-dir", state),
        )
    )
    assert "rebuilding per-key state from 200 earlier events" in result.stderr, result.stderr
    reference = {b["id"]: b for b in read_jsonl(full)}
    assert len(reference) == len(old) + len(new)
    table = pq.read_table(later).to_pydict()
    assert sorted(table["id"]) == sorted(e.id for e in new)
    with_history = 0
    for event_id, history, prediction in zip(table["id"], table["feature.history"], table["prediction"], strict=True):
        assert history == reference[event_id]["features"]["history"], event_id
        assert abs(prediction - reference[event_id]["prediction"]) <= 1e-6, event_id
        with_history += sum(row[-1] for row in history) > 1  # the mask column: earlier events of its key
    assert with_history > 0, "some later event's history holds events from before the start"


# ---------------------------------------------------------------------------------------------
# sluice swap-model


async def test_swap_model_to_a_demo_by_name_reaches_the_configured_worker_without_worker(kafka, tmp_path):
    """`sluice swap-model -p NAME --version V --demo NAME --name N` with no --worker: the config's
    web_bind:web_port. GET /pipelines/NAME/model says what serves; the outputs say so too."""
    topics = topics_for(unique("swapdemo"))
    port = free_port()
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="sd", partitions=1, app_extra=f"web_port = {port}", **topics
    )
    env = {"SLUICE_ADMIN_TOKEN": "swap-demo-token"}
    events = list(demo_events(10, seed=95))
    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline sd: ready", web_port=port, env=env):
        assert served(await asyncio.to_thread(get_json, port, "/pipelines/sd/model")) == (200, "sd", "fraud-mlp", "2")
        swap = ("--config", str(config), "swap-model", "-p", "sd", "--version", "5", "--demo", "fraud-mlp")
        result = ok(await cli(*swap, "--name", "mlp-five", env=env))
        assert result.stderr.strip() == f"http://127.0.0.1:{port}: pipeline sd now serves mlp-five v5"
        serving = await asyncio.to_thread(get_json, port, "/pipelines/sd/model")
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events])
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events))
    assert served(serving) == (200, "sd", "mlp-five", "5")
    assert serving[1]["decision"]["action"] == "swap", "kept in the decisions topic for the group"
    assert {(orjson.loads(r.value)["model"], orjson.loads(r.value)["model_version"]) for r in outputs} == {
        ("mlp-five", "5")
    }


def test_swap_model_refuses_to_send_the_token_over_plain_http_to_another_host(tmp_path):
    """README: `--worker http://10.0.0.5:6066` exits 2 with the reason, before sending anything."""
    config = write_config(tmp_path, bootstrap="127.0.0.1:9092", pipeline="p", **topics_for("never-created"))
    result = run_sluice(
        *("--config", str(config), "swap-model", "--version", "2", "--demo", "fraud-mlp"),
        *("--worker", "http://10.0.0.5:6066"),
        env={"SLUICE_ADMIN_TOKEN": "t"},
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        "sluice swap-model: --worker http://10.0.0.5:6066: refusing to send the admin token over plain HTTP to 10.0.0.5"
    ), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
