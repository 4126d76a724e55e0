"""The minimal pipeline (bench/minimal.py) run as ``bench.latency`` runs it, on the real broker: every
event gets exactly one output with the demo model's own prediction, and it stops on SIGTERM."""

from __future__ import annotations

import signal

import orjson
import pytest

from app.demo_events import demo_events
from bench.latency import create_topics, start_worker
from bench.peers import DemoModel, needs_history, with_history
from tests.integration.kafka_helpers import produce_raw, read_topic, unique

EVENTS = 600


def expected_predictions(model: str, values: list[tuple[bytes, bytes]]) -> dict[str, float]:
    """What the demo model scores for each event, history (per record key, in order) included."""
    docs, kept = [], {}
    for key, value in values:
        doc = orjson.loads(value)
        if needs_history(model):
            doc, kept[key] = with_history(doc, kept.get(key, []))
        docs.append(doc)
    scores = DemoModel(model, torch_threads=1).score(docs)
    return {doc["id"]: score for doc, score in zip(docs, scores, strict=True)}


@pytest.mark.parametrize("model", ["fraud-mlp", "fraud-transformer"])
async def test_the_minimal_pipeline_scores_every_event_once_with_the_models_prediction(kafka, tmp_path, model):
    topic_in, topic_out = unique(f"minimal-{model}-in"), unique(f"minimal-{model}-out")
    await create_topics([topic_in, topic_out])
    items = [(e.key, e.value) for e in demo_events(EVENTS, seed=4)]
    await produce_raw(kafka, topic_in, items)
    proc = start_worker("minimal", model, topic_in, topic_out, tmp_path)  # as bench.latency starts it
    try:
        outputs = await read_topic(kafka, topic_out, expected=EVENTS, within_s=120, idle=1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=60)
    assert returncode == 0, (tmp_path / f"{model}-minimal.log").read_text()
    bodies = [orjson.loads(r.value) for r in outputs]
    assert sorted(b["id"] for b in bodies) == sorted(orjson.loads(v)["id"] for _, v in items)
    expected = expected_predictions(model, items)
    for body in bodies:
        assert body["prediction"] == pytest.approx(expected[body["id"]], abs=1e-5), body
