"""A pipeline's model roles on a real worker and the real broker: the circuit breaker and its
fallback, a hung model's timeout, the canary's sticky share of keys (live and in a backfill),
and a slow shadow that never changes or delays the champion's outputs."""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict

import orjson
import pytest

from app.demo_events import demo_events
from app.testing import score_async
from tests.integration.kafka_helpers import (
    ROOT,
    free_port,
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    scrape,
    tally,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)

WEIGHTS = ROOT / "models" / "weights" / "fraud-mlp.pt"


def faulty(cls: str, **init_args: str) -> str:
    args = ", ".join(f'{k} = "{v}"' for k, v in init_args.items())
    return (
        f'class = "tests.integration.faulty_models:{cls}"\nstate_dict = "{WEIGHTS}"\nname = "champ"\n'
        f'version = "1"\ninit_args = {{ {args} }}'
    )


def by_position(records):
    """Each source position's outputs (at-least-once duplicates side by side)."""
    outputs = defaultdict(list)
    for r in records:
        body = orjson.loads(r.value)
        s = body["source"]
        outputs[(s["partition"], s["offset"])].append(body)
    return outputs


async def produce_in_steps(kafka: str, topic: str, events, steps: int = 10) -> None:
    """A steady stream: the events in ``steps`` slices, a little apart."""
    size = math.ceil(len(events) / steps)
    for i in range(0, len(events), size):
        await produce_raw(kafka, topic, [(e.key, e.value) for e in events[i : i + size]])
        await asyncio.sleep(0.2)


async def test_a_failing_champion_falls_back_then_closes_its_circuit_once_it_recovers(kafka, tmp_path):
    name = unique("breaker")
    topics = topics_for(name)
    flag = tmp_path / "broken"
    extra = "fallback = { constant = 0.0 }\nbreaker = { failures = 2, cooldown_ms = 300 }\nmax_fill_wait_ms = 1.0\n"
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="br", model=faulty("SwitchableFraudMLP", broken_flag=str(flag)),
        extra=extra, **topics,
    )  # fmt: skip
    events = list(demo_events(900, seed=41))
    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="pipeline br: ready", web_port=free_port()) as worker:
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events[:300]])
        await read_topic(kafka, topics["output_topic"], expected=300, within_s=60)
        flag.touch()
        await produce_in_steps(kafka, topics["input_topic"], events[300:600], steps=6)
        wait_for_log(log, "CIRCUIT OPEN", proc=worker)
        await read_topic(kafka, topics["output_topic"], expected=600, within_s=60)
        flag.unlink()
        await produce_in_steps(kafka, topics["input_topic"], events[600:], steps=6)
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=60, idle=1.0)
        wait_for_log(log, "circuit closed", proc=worker)
        assert worker.poll() is None

    missing, _ = tally(outputs, {e.id for e in events})
    assert not missing
    positions = by_position(outputs)
    assert len(positions) == len(events), "one primary output per event"
    for bodies in positions.values():
        assert len({(b.get("role"), b["prediction"]) for b in bodies}) == 1, "duplicates, if any, agree"
    fallback = [b[0] for b in positions.values() if b[0].get("role") == "fallback"]
    assert fallback, "the fallback scored while the champion was down"
    assert all(
        b["fallback"] is True and b["prediction"] == 0.0 and "device lost" in b["fallback_reason"] for b in fallback
    )
    assert all(b["model"] == "constant" for b in fallback)
    first_ids = {e.id for e in events[:300]}
    last_ids = {e.id for e in events[-100:]}
    served = {b[0]["id"]: b[0] for b in positions.values()}
    assert all("role" not in served[i] and served[i]["model"] == "champ" for i in first_ids | last_ids)


async def test_a_hung_champion_times_out_and_the_fallback_model_scores_meanwhile(kafka, tmp_path):
    name = unique("hung")
    topics = topics_for(name)
    flag = tmp_path / "hang"
    extra = (
        'fallback = { demo = "fraud-mlp", version = "fb" }\n'
        "breaker = { failures = 1, cooldown_ms = 500, timeout_ms = 300 }\n"
    )
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="hg", model=faulty("HangingFraudMLP", hang_flag=str(flag)),
        extra=extra, **topics,
    )  # fmt: skip
    events = list(demo_events(400, seed=42))
    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="pipeline hg: ready", web_port=free_port()) as worker:
        flag.touch()
        await produce_in_steps(kafka, topics["input_topic"], events[:200], steps=4)
        wait_for_log(log, "inference timeout", proc=worker)
        await read_topic(kafka, topics["output_topic"], expected=200, within_s=60)
        flag.unlink()
        await produce_in_steps(kafka, topics["input_topic"], events[200:], steps=4)
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=60, idle=1.0)
        wait_for_log(log, "circuit closed", proc=worker)
        assert worker.poll() is None

    positions = by_position(outputs)
    assert len(positions) == len(events)
    roles = [b[0].get("role") for b in positions.values()]
    assert "fallback" in roles and None in roles
    fb = [b[0] for b in positions.values() if b[0].get("role") == "fallback"]
    assert all(b["model_version"] == "fb" and "inference timeout" in b["fallback_reason"] for b in fb)


async def test_a_canary_scores_a_sticky_share_of_keys_live_and_in_a_backfill(kafka, tmp_path):
    name = unique("canary")
    topics = topics_for(name)
    extra = 'canary = { demo = "fraud-mlp", version = "c2", fraction = 0.3 }\n'
    config = write_config(tmp_path, bootstrap=kafka, pipeline="cn", extra=extra, **topics)
    events = list(demo_events(3000, seed=43))
    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline cn: ready", web_port=free_port()):
        await produce_in_steps(kafka, topics["input_topic"], events, steps=5)
        live = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=90)
    done = run_sluice("--config", str(config), "backfill", "--pipeline", "cn", timeout=300)
    assert done.returncode == 0, done.stderr
    replayed = await read_topic(kafka, f"{topics['output_topic']}-backfill", expected=len(events), within_s=60)

    account = {e.id: e.key for e in events}  # a backfill keys its outputs by source position

    def versions_by_key(records):
        seen = defaultdict(set)
        for r in records:
            body = orjson.loads(r.value)
            seen[account[body["id"]]].add(body["model_version"])
        return seen

    live_keys, backfill_keys = versions_by_key(live), versions_by_key(replayed)
    assert all(len(v) == 1 for v in live_keys.values()), "a key never switches model"
    assert live_keys == backfill_keys, "the backfill gives the canary the same keys"
    keys = len(live_keys)
    on_canary = sum(v == {"c2"} for v in live_keys.values())
    bound = 4 * math.sqrt(keys * 0.3 * 0.7)
    assert abs(on_canary - 0.3 * keys) <= bound, (on_canary, keys)
    assert all(
        orjson.loads(r.value).get("role") == "canary" for r in live if orjson.loads(r.value)["model_version"] == "c2"
    )


async def shadow_counts(port: int, *, until: int, within_s: float = 60) -> tuple[int, int]:
    """The shadow's scored and skipped events from the worker's /metrics, once they add up to ``until``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        samples = await asyncio.to_thread(scrape, port)
        counts = [0.0, 0.0]
        for (name, labels), value in samples.items():
            if dict(labels).get("role") == "shadow":
                if name == "sluice_model_events_total":
                    counts[0] += value
                elif name == "sluice_model_skipped_events_total":
                    counts[1] += value
        if sum(counts) >= until or asyncio.get_running_loop().time() > deadline:
            return int(counts[0]), int(counts[1])
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("isolation", ["process", "thread"])
async def test_a_slow_shadow_leaves_the_champions_outputs_as_they_are_and_scores_what_it_does_not_skip(
    kafka, tmp_path, isolation
):
    name = unique("shadow")
    topics = topics_for(name)
    extra = (
        f'shadows.slow = {{ class = "tests.integration.faulty_models:SlowFraudMLP", state_dict = "{WEIGHTS}", '
        f'version = "s1", init_args = {{ delay_s = 0.05 }}, queue_batches = 2, isolation = "{isolation}" }}\n'
    )
    config = write_config(tmp_path, bootstrap=kafka, pipeline="sh", extra=extra, **topics)
    events = list(demo_events(2000, seed=44))
    expected = (await score_async(config, "sh", [e.value for e in events])).scores()
    log = tmp_path / "worker.log"
    port = free_port()
    with running_worker(config, log, ready_text="pipeline sh: ready", web_port=port):
        await produce_in_steps(kafka, topics["input_topic"], events, steps=10)
        served = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=90)
        # Every event offered to the shadow is scored or skipped (counted): wait until all are.
        scored, skipped = await shadow_counts(port, until=len(events))
        shadow = await read_topic(kafka, f"{topics['output_topic']}-shadow", expected=scored, within_s=30)
    assert scored + skipped == len(events) and scored > 0

    bodies = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in served}
    assert set(bodies) == set(expected)
    # Equal but for float rounding: batches of another size sum in another order.
    assert all(abs(bodies[i]["prediction"] - expected[i]) < 1e-5 and "role" not in bodies[i] for i in expected)
    shadows = [orjson.loads(r.value) for r in shadow]
    # A record for every event the shadow scored (written by its own process, or on the worker's loop).
    assert len({s["id"] for s in shadows}) == scored
    for s in shadows:
        assert s["shadow"] is True and s["model_version"] == "s1"
        assert s["served"]["prediction"] == bodies[s["id"]]["prediction"], "the served score beside it"
        assert abs(s["prediction"] - expected[s["id"]]) < 1e-5, "same weights, same scores"


@pytest.mark.parametrize(
    ("role", "table"),
    [
        ("canary", 'canary = { demo = "fraud-transformer", version = "t9", fraction = 0.5 }'),
        # Loaded and checked in the shadow's own process: its failure is still one line at start.
        ("shadows.deep", 'shadows.deep = { demo = "fraud-transformer", version = "t9" }'),
    ],
)
async def test_a_role_whose_model_does_not_fit_is_left_out_and_the_champion_serves_every_event(
    kafka, tmp_path, role, table
):
    name = unique("misfit")
    topics = topics_for(name)
    # The transformer takes a per-key history this MLP pipeline does not have.
    extra = table + "\n"
    config = write_config(tmp_path, bootstrap=kafka, pipeline="mf", extra=extra, **topics)
    events = list(demo_events(200, seed=45))
    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="pipeline mf: ready", web_port=free_port()) as worker:
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in events])
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=60)
        assert worker.poll() is None
    assert f"[pipelines.mf.{role}] left out, serving without it" in log.read_text()
    bodies = [orjson.loads(r.value) for r in outputs]
    assert {b["model_version"] for b in bodies} == {"2"} and all("role" not in b for b in bodies)
