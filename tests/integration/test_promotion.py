"""Promotion and roll-back for a whole consumer group, on the real broker: a decision sent to one
worker is applied by every worker, between two batches, and by a worker started after it; a
canary that breaks its limit is rolled back on every worker and stays so across a restart."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.config import load_config
from app.decision_log import ensure_decisions_topic
from app.demo_events import demo_events
from app.topics import ensure_topics, partitions_of, topic_settings
from streams.errors import TopicMissingError
from tests.integration.kafka_helpers import (
    ROOT,
    finished,
    free_port,
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    start_producing,
    tally,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)
from tests.integration.test_model_roles import produce_in_steps
from tests.one_line import one_line_exit_2

TOKEN = "promotion-test-token"
ENV = {"SLUICE_ADMIN_TOKEN": TOKEN}
WEIGHTS = ROOT / "models" / "weights" / "fraud-mlp.pt"


def model_page(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/pipelines/pr/model", timeout=10) as reply:
        return json.loads(reply.read())


async def page_once(port: int, wanted: Callable[[dict[str, Any]], bool], within_s: float = 30) -> dict[str, Any]:
    """The worker's model page once ``wanted`` holds for it (the last one read otherwise)."""
    deadline = time.monotonic() + within_s
    page = await asyncio.to_thread(model_page, port)
    while not wanted(page) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        page = await asyncio.to_thread(model_page, port)
    return page


def labels_in_offset_order(bodies: list[dict[str, Any]]) -> dict[int, list[tuple[str, str | None]]]:
    """Each input partition's outputs as (version, role), in the order of their source offsets."""
    by_partition: dict[int, list[tuple[int, tuple[str, str | None]]]] = {}
    for b in bodies:
        by_partition.setdefault(b["source"]["partition"], []).append(
            (b["source"]["offset"], (b["model_version"], b.get("role")))
        )
    return {p: [label for _, label in sorted(outputs)] for p, outputs in by_partition.items()}


async def test_a_promotion_sent_to_one_worker_is_served_by_the_whole_group_and_by_a_later_worker(kafka, tmp_path):
    topics = topics_for(unique("promote"))
    extra = 'canary = { demo = "fraud-mlp", version = "c2", fraction = 0.3 }'
    config = write_config(tmp_path, bootstrap=kafka, pipeline="pr", partitions=4, extra=extra, **topics)
    decisions_topic = load_config(config, environ={}).app.decisions_topic
    ports = [free_port(), free_port(), free_port()]
    logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
    count, rate, seed = 4000, 400, 61
    after = list(demo_events(600, seed=seed + 1))  # produced once both workers serve the promoted model
    late = list(demo_events(300, seed=seed + 2))  # once a third worker, started later, has joined

    with (
        running_worker(config, logs[0], ready_text="pipeline pr: ready", web_port=ports[0], env=ENV) as first,
        running_worker(config, logs[1], ready_text="pipeline pr: ready", web_port=ports[1], env=ENV) as second,
    ):
        wait_for_log(logs[0], "partitions revoked", proc=first)
        producer = start_producing(config, count, rate, seed)
        await read_topic(kafka, topics["output_topic"], expected=count // 5, within_s=60)
        promoted = await asyncio.to_thread(
            run_sluice,
            *("--config", str(config), "swap-model", "-p", "pr", "--promote", "canary"),
            *("--reason", "clean on history and on 30% of keys", "--worker", f"http://127.0.0.1:{ports[0]}"),
            env=ENV,
        )
        assert promoted.returncode == 0, promoted.stderr
        assert "pipeline pr promoted its canary: now serves fraud-mlp vc2; every worker of the group " in (
            promoted.stderr
        )
        assert decisions_topic in promoted.stderr
        # The other worker was not asked: it follows the decision from the topic.
        wait_for_log(logs[1], "now serving model fraud-mlp vc2 (was fraud-mlp v2), canary stopped", proc=second)
        pages = [await asyncio.to_thread(model_page, port) for port in ports[:2]]
        await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in after])
        finished(producer)

        with running_worker(config, logs[2], ready_text="pipeline pr: ready", web_port=ports[2], env=ENV):
            late_page = await asyncio.to_thread(model_page, ports[2])
            await produce_raw(kafka, topics["input_topic"], [(e.key, e.value) for e in late])
            total = count + len(after) + len(late)
            outputs = await read_topic(kafka, topics["output_topic"], expected=total, within_s=120, idle=2)
    decisions = await read_topic(kafka, decisions_topic, expected=1, within_s=10)

    expected = {e.id for e in demo_events(count, seed=seed)} | {e.id for e in after} | {e.id for e in late}
    missing, duplicates = tally(outputs, expected)
    assert not missing, f"{len(missing)} events never scored, e.g. {missing[:10]}"
    assert not duplicates, "no fault, so exactly one output per event"
    bodies = [orjson.loads(r.value) for r in outputs]
    before, promoted_label = {("2", None), ("c2", "canary")}, ("c2", None)
    assert {(b["model_version"], b.get("role")) for b in bodies} <= before | {promoted_label}
    for partition, labels in labels_in_offset_order(bodies).items():
        # Whole batches change models: in each partition, the roles of before, then the promoted
        # champion alone; never one batch (nor a later one) scored by the old models again.
        first_promoted = labels.index(promoted_label) if promoted_label in labels else len(labels)
        assert set(labels[:first_promoted]) <= before, partition
        assert set(labels[first_promoted:]) == {promoted_label}, f"partition {partition} went back after promotion"
    served_after = [b for b in bodies if b["id"] in {e.id for e in after} | {e.id for e in late}]
    assert {(b["model_version"], b.get("role")) for b in served_after} == {promoted_label}

    for page in [*pages, late_page]:
        assert (page["model"], page["version"], page["roles"]["canary"]) == ("fraud-mlp", "c2", None)
        assert page["decision"]["action"] == "promote" and page["decision"]["role"] == "canary"
    assert pages[0]["decision"] == pages[1]["decision"] == late_page["decision"], "one decision, everywhere"
    assert "latest model decision in" in logs[2].read_text()
    assert "with model fraud-mlp vc2" in logs[2].read_text(), (
        "the later worker served the promoted model from its start"
    )
    (record,) = decisions
    kept = orjson.loads(record.value)
    assert record.key == b"pr"
    assert {k: kept[k] for k in ("pipeline", "action", "role", "model", "version", "reason")} == {
        "pipeline": "pr",
        "action": "promote",
        "role": "canary",
        "model": "fraud-mlp",
        "version": "c2",
        "reason": "clean on history and on 30% of keys",
    }
    assert kept["by"].startswith("sluice-pr@") and kept["decided_at"] > 0


async def test_a_canary_that_breaks_its_limit_is_rolled_back_on_every_worker_and_after_a_restart(kafka, tmp_path):
    topics = topics_for(unique("rollback"))
    flag = tmp_path / "broken"
    extra = (
        f'canary = {{ class = "tests.integration.faulty_models:SwitchableFraudMLP", state_dict = "{WEIGHTS}", '
        f'version = "bad", fraction = 0.5, max_error_rate = 0.1, min_batches = 3, '
        f'init_args = {{ broken_flag = "{flag}" }} }}\nmax_fill_wait_ms = 1.0'
    )
    config = write_config(tmp_path, bootstrap=kafka, pipeline="pr", partitions=2, extra=extra, **topics)
    decisions_topic = load_config(config, environ={}).app.decisions_topic
    ports = [free_port(), free_port(), free_port()]
    logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
    events = list(demo_events(1200, seed=62))
    # First only events of partition 0: one worker's canary fails and breaks its limit, the other's
    # never scores, and stops only because the first worker's decision says so.
    partition_of = DefaultPartitioner()
    first_part = [e for e in events if partition_of(e.key, [0, 1], [0, 1]) == 0]
    rest = [e for e in events if e not in first_part]

    with (
        running_worker(config, logs[0], ready_text="pipeline pr: ready", web_port=ports[0]) as first,
        running_worker(config, logs[1], ready_text="pipeline pr: ready", web_port=ports[1]) as second,
    ):
        wait_for_log(logs[0], "partitions revoked", proc=first)
        flag.touch()  # after both warmed it up: from now on the canary fails every batch
        await produce_in_steps(kafka, topics["input_topic"], first_part, steps=8)
        pages = [await page_once(port, lambda page: page["roles"]["canary"] is None) for port in ports[:2]]
        await produce_in_steps(kafka, topics["input_topic"], rest, steps=4)
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=90, idle=1.0)
        assert first.poll() is None and second.poll() is None
    with running_worker(config, logs[2], ready_text="pipeline pr: ready", web_port=ports[2]):
        restarted = await asyncio.to_thread(model_page, ports[2])
    decisions = await read_topic(kafka, decisions_topic, expected=1, within_s=10)

    missing, duplicates = tally(outputs, {e.id for e in events})
    assert not missing and not duplicates, "every event exactly one output, the canary's failed batches the champion's"
    assert {(orjson.loads(r.value)["model_version"], orjson.loads(r.value).get("role")) for r in outputs} == {
        ("2", None)
    }
    texts = [log.read_text() for log in logs[:2]]
    broke = [n for n, text in enumerate(texts) if "CANARY ROLLED BACK" in text]
    assert len(broke) == 1, "only the worker with the canary's traffic broke its limit"
    follower = texts[1 - broke[0]]
    assert "canary stopped, fraud-mlp v2 scores every key, as decided: rollback canary (SwitchableFraudMLP vbad" in (
        follower
    )
    for page in pages:
        assert page["roles"]["canary"] is None, "stopped on both workers"
        assert page["decision"]["action"] == "rollback" and "max_error_rate" in page["decision"]["reason"]
    assert restarted["roles"]["canary"] is None, "a restart does not bring it back"
    assert restarted["decision"] == pages[0]["decision"]
    (record,) = decisions
    last = orjson.loads(record.value)
    assert (last["action"], last["role"], last["model"], last["version"]) == (
        "rollback",
        "canary",
        "SwitchableFraudMLP",
        "bad",
    )
    assert "failed 3 of 3 batches" in last["reason"] and "max_error_rate" in last["reason"]


async def test_the_decisions_topic_is_created_compacted_and_an_unfit_one_stops_the_worker_with_one_line(
    kafka, tmp_path
):
    created = unique("decisions")
    await ensure_decisions_topic({"bootstrap_servers": kafka}, created, create=True)
    await ensure_decisions_topic({"bootstrap_servers": kafka}, created, create=False)  # there now: fine
    settings = await topic_settings(kafka, [created], ["cleanup.policy"])
    assert settings[created]["cleanup.policy"] == "compact"
    assert await partitions_of(kafka, created) == [0]
    missing = unique("decisions")
    with pytest.raises(TopicMissingError, match=f"the model decisions topic {missing} does not exist; create it"):
        await ensure_decisions_topic({"bootstrap_servers": kafka}, missing, create=False)

    deleting = unique("decisions")
    await ensure_topics(kafka, [deleting], create=True, partitions=1)  # a plain topic: records expire
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="pr",
        app_extra=f'decisions_topic = "{deleting}"',
        **topics_for(unique("unfit")),
    )
    result = await asyncio.to_thread(run_sluice, "--config", str(config), "worker", "--web-port", str(free_port()))
    line = one_line_exit_2(result)
    assert line.startswith(f"sluice worker: the model decisions topic {deleting} has cleanup.policy=delete: ")
    assert line.endswith("set cleanup.policy=compact on it, or name another [app] decisions_topic")
