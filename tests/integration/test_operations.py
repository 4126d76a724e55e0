"""What an operator relies on, against the real broker: metrics, model swaps, scaling out."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import orjson
import torch

from app.demo_events import demo_events
from tests.integration.kafka_helpers import (
    ROOT,
    finished,
    free_port,
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    scrape,
    start_producing,
    stop_gracefully,
    tally,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)


async def test_metrics_move_with_the_traffic_the_worker_scores(kafka, tmp_path):
    name = unique("metrics")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="m", partitions=2, **topics)
    port = free_port()
    good = list(demo_events(300, seed=31))
    items = [(e.key, e.value) for e in good] + [(b"k", b"not json"), (b"k", b"[]")]
    p = (("pipeline", "m"),)
    champion = (("model", "fraud-mlp"), ("pipeline", "m"), ("role", "champion"), ("version", "2"))

    with running_worker(config, tmp_path / "worker.log", ready_text="partitions assigned: ", web_port=port):
        before = scrape(port)
        assert before[("sluice_events_received_total", p)] == 0
        assert before[("sluice_model_info", champion)] == 1
        await produce_raw(kafka, topics["input_topic"], items)
        await read_topic(kafka, topics["output_topic"], expected=len(good), within_s=60)
        await read_topic(kafka, topics["dead_letter_topic"], expected=2, within_s=30)
        after = scrape(port)
        for _ in range(20):  # the committer records a batch just after its acks arrive
            if after[("sluice_predictions_total", p)] == len(good):
                break
            await asyncio.sleep(0.25)
            after = scrape(port)

    assert after[("sluice_events_received_total", p)] == len(items)
    assert after[("sluice_predictions_total", p)] == len(good)
    assert after[("sluice_dead_letters_total", (("pipeline", "m"), ("reason", "InvalidJSON")))] == 1
    assert after[("sluice_dead_letters_total", (("pipeline", "m"), ("reason", "NotAnObject")))] == 1
    assert after[("sluice_end_to_end_latency_seconds_count", p)] == len(items)
    assert after[("sluice_end_to_end_latency_seconds_sum", p)] > 0
    batches = after[("sluice_batches_total", p)]
    assert batches >= 1 and after[("sluice_batch_size_count", p)] == batches
    assert after[("sluice_batch_size_sum", p)] == len(items)
    assert after[("sluice_inference_seconds_count", p)] >= 1
    assert after[("sluice_queue_depth", p)] == 0
    assert after[("sluice_model_unavailable", p)] == 0
    # The same evidence by model version: the champion scored every valid event, its circuit closed.
    assert after[("sluice_model_events_total", champion)] == len(good)
    assert after[("sluice_model_inference_seconds_count", champion)] == after[("sluice_model_batches_total", champion)]
    assert after[("sluice_circuit_state", p)] == 0
    lags = {k: v for k, v in after.items() if k[0] == "sluice_consumer_lag"}
    assert {dict(k[1])["partition"] for k in lags} == {"0", "1"}, "lag for each assigned partition"
    costs = {int(dict(k[1])["batch_size"]): v for k, v in after.items() if k[0] == "sluice_cost_model_batch_seconds"}
    assert sorted(costs)[:3] == [1, 2, 4] and max(costs) == 512
    assert all(v > 0 for v in costs.values())
    assert ("process_resident_memory_bytes", ()) in after


async def test_a_model_swapped_mid_stream_scores_every_event_with_exactly_one_version(kafka, tmp_path):
    name = unique("swap")
    topics = topics_for(name)
    models = tmp_path / "models"
    models.mkdir()
    # Version 2: the same network with its output shifted, so its predictions differ from v1's.
    weights = torch.load(ROOT / "models" / "weights" / "fraud-mlp.pt", weights_only=True)
    weights["layers.4.bias"] = weights["layers.4.bias"] + 1.0
    torch.save(weights, models / "fraud-mlp-v2.pt")
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="swap", partitions=2, extra=f'model_dirs = ["{models}"]', **topics
    )
    port, token = free_port(), "swap-test-token"
    count, rate, seed = 5000, 400, 32
    env = {"SLUICE_ADMIN_TOKEN": token}
    log = tmp_path / "worker.log"

    with running_worker(config, log, ready_text="partitions assigned: ", web_port=port, env=env):
        swap = ("--config", str(config), "swap-model", "--worker", f"http://127.0.0.1:{port}")
        outside = str(ROOT / "models" / "weights" / "fraud-mlp.pt")
        wrong = await asyncio.to_thread(run_sluice, *swap, "--version", "9", "--state-dict", outside)
        assert wrong.returncode == 2, "no token in the environment: refused before asking"
        refused = await asyncio.to_thread(
            run_sluice,
            *swap,
            "--version",
            "3",
            "--state-dict",
            str(ROOT / "models" / "weights" / "fraud-mlp.pt"),
            env=env,
        )
        assert refused.returncode == 1 and "outside the folders models may be loaded from" in refused.stderr
        broken = models / "broken.pt"
        broken.write_bytes(b"not a state dict")
        failed = await asyncio.to_thread(run_sluice, *swap, "--version", "4", "--state-dict", str(broken), env=env)
        assert failed.returncode == 1 and "the old model keeps serving" in failed.stderr
        # Now the real one, in the middle of a stream. The stream may or may not have ended when
        # the swap lands (a CLI start costs seconds, more on a loaded machine); the events
        # produced after the swap returned make sure v2 serves some, whatever the timing.
        producer = start_producing(config, count, rate, seed)
        await read_topic(kafka, topics["output_topic"], expected=count // 5, within_s=60)
        swapped = await asyncio.to_thread(
            run_sluice, *swap, "--version", "7", "--state-dict", str(models / "fraud-mlp-v2.pt"), env=env
        )
        assert swapped.returncode == 0, swapped.stderr
        assert "now serves fraud-mlp v7" in swapped.stderr
        after = list(demo_events(500, seed=seed + 1))
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in after])
        finished(producer)
        total = count + len(after)
        outputs = await read_topic(kafka, topics["output_topic"], expected=total, within_s=90, idle=2)

    expected = {e.id for e in demo_events(count, seed=seed)} | {e.id for e in after}
    missing, duplicates = tally(outputs, expected)
    assert not missing, f"{len(missing)} events never scored, e.g. {missing[:10]}"
    assert not duplicates, "no fault, so exactly one prediction per event"
    bodies = [orjson.loads(r.value) for r in outputs]
    assert Counter(b["model_version"] for b in bodies).keys() == {"2", "7"}  # the demo's v2, then the swap's
    for partition in {b["source"]["partition"] for b in bodies}:
        versions = [b["model_version"] for b in bodies if b["source"]["partition"] == partition]
        assert versions == sorted(versions), "within a partition, v2 until the swap, v7 after"
    assert "now serving model fraud-mlp v7 (was fraud-mlp v2)" in log.read_text()


async def test_two_workers_in_one_group_share_the_partitions_and_score_every_event(kafka, tmp_path):
    name = unique("scale")
    topics = topics_for(name)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="scale", partitions=4, **topics)
    count, seed = 2000, 33
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    with running_worker(config, first_log, ready_text="partitions assigned: ") as first:
        with running_worker(config, second_log, ready_text="partitions assigned: ") as second:
            wait_for_log(first_log, "partitions revoked", proc=first)
            produced = await asyncio.to_thread(
                run_sluice, "--config", str(config), "produce", "--count", str(count), "--seed", str(seed)
            )
            assert produced.returncode == 0, produced.stderr
            outputs = await read_topic(kafka, topics["output_topic"], expected=count, within_s=90, idle=2)
            # What each worker owns while both run: the last assignment each one logged.
            owned = [last_assignment(log) for log in (first_log, second_log)]
            assert stop_gracefully(second) == 0
        assert stop_gracefully(first) == 0

    missing, _ = tally(outputs, {e.id for e in demo_events(count, seed=seed)})
    assert not missing, f"{len(missing)} events never scored, e.g. {missing[:10]}"
    assert owned[0] and owned[1], f"both workers got partitions: {owned}"
    assert not owned[0] & owned[1]
    assert owned[0] | owned[1] == {f"{topics['input_topic']}[{p}]" for p in range(4)}


def last_assignment(log: Path) -> set[str]:
    last = log.read_text().rsplit("partitions assigned: ", 1)[1].splitlines()[0]
    return {part.strip() for part in last.split(",") if part.strip() != "none"}
