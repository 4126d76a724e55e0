"""End to end through the real broker: events produced to a topic come out scored on another."""

from __future__ import annotations

from pathlib import Path

import orjson

from app.demo_events import demo_events
from app.testing import score_async
from tests.integration.kafka_helpers import (
    produce_raw,
    read_topic,
    run_sluice,
    running_worker,
    unique,
    write_config,
)


def test_the_broker_is_apache_kafka_on_the_jvm(kafka):
    result = run_sluice("--help")
    assert result.returncode == 0
    # The process listening on the broker port runs Kafka's own main class.
    cmdlines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdlines.append((proc / "cmdline").read_bytes().split(b"\0"))
            except OSError:
                continue
    brokers = [c for c in cmdlines if b"kafka.Kafka" in c and any(a.endswith(b"java") for a in c[:1])]
    assert brokers, "no JVM running kafka.Kafka: is the broker really Apache Kafka?"
    assert any(b"kafka_2.13" in a or b"/libs/*" in a for a in brokers[0])


async def test_every_produced_event_gets_a_prediction_keyed_like_its_input(kafka, tmp_path):
    name = unique("e2e")
    topics = {"input_topic": f"{name}-in", "output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq"}
    config = write_config(tmp_path, bootstrap=kafka, pipeline="e2e", **topics)
    count, seed = 400, 11
    expected_keys = {e.id: e.key for e in demo_events(count, seed=seed)}

    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline e2e: scoring"):
        produced = run_sluice("--config", str(config), "produce", "--count", str(count), "--seed", str(seed))
        assert produced.returncode == 0, produced.stderr
        assert f"{count}/{count}" in produced.stderr
        outputs = await read_topic(kafka, topics["output_topic"], expected=count, within_s=90)

    bodies = [orjson.loads(r.value) for r in outputs]
    ids = [b["id"] for b in bodies]
    missing = sorted(set(expected_keys) - set(ids))
    assert not missing, f"{len(missing)} events got no prediction, e.g. {missing[:10]}"
    for record, body in zip(outputs, bodies, strict=True):
        assert record.key == expected_keys[body["id"]], "a prediction is keyed like its input event"
        assert record.partition == body["source"]["partition"], "co-partitioned with its input"
        assert 0.0 <= body["prediction"] <= 1.0
        assert body["model"] == "fraud-mlp"
        assert body["source"]["topic"] == topics["input_topic"]
        assert body["latency_ms"] >= 0
    for partition in {r.partition for r in outputs}:
        offsets = [b["source"]["offset"] for r, b in zip(outputs, bodies, strict=True) if r.partition == partition]
        assert offsets == sorted(offsets), f"outputs of partition {partition} are out of input order"


def test_a_missing_topic_stops_the_worker_with_its_name_when_creating_is_off(kafka, tmp_path):
    name = unique("missing")
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline="missing",
        input_topic=f"{name}-in",
        output_topic=f"{name}-out",
        dead_letter_topic=f"{name}-dlq",
    )
    config.write_text(config.read_text().replace("create_topics = true", "create_topics = false"))
    result = run_sluice("--config", str(config), "worker")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{name}-in" in result.stderr
    assert "create_topics = true" in result.stderr


async def test_a_worker_reads_features_nested_in_json_objects_by_their_path(kafka, tmp_path):
    name = unique("nested")
    topics = {"input_topic": f"{name}-in", "output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq"}
    inputs = '[{ field = ["payment", "features"], shape = [32] }]'
    config = write_config(tmp_path, bootstrap=kafka, pipeline="nested", inputs=inputs, **topics)
    events = list(demo_events(100, seed=13))
    nested = []
    for event in events:
        doc = orjson.loads(event.value)
        doc["payment"] = {"features": doc.pop("features"), "account": doc["account"]}
        nested.append((event.key, orjson.dumps(doc)))
    flat = (b"k", events[0].value)  # the features where the config does not look
    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline nested: scoring"):
        await produce_raw(kafka, topics["input_topic"], [*nested[:50], flat, *nested[50:]])
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=90)
        (dead,) = await read_topic(kafka, topics["dead_letter_topic"], expected=1, within_s=30)
    (tmp_path / "json").mkdir()
    twin = write_config(tmp_path / "json", bootstrap=kafka, pipeline="nested", **topics)
    expected = (await score_async(twin, "nested", [e.value for e in events])).scores()
    scores = {orjson.loads(r.value)["id"]: orjson.loads(r.value)["prediction"] for r in outputs}
    assert scores.keys() == expected.keys()
    assert all(abs(scores[i] - expected[i]) < 1e-6 for i in expected), "the same features, the same scores"
    letter = orjson.loads(dead.value)
    assert (letter["error"], letter["reason"]) == ("MissingField", "field 'payment.features' is missing")
