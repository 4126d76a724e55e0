"""`sluice watch` turns whatever is on a topic into a line, never a traceback."""

from __future__ import annotations

import orjson
import pytest

from app.commands.watch import describe, latency_of


@pytest.mark.parametrize("value", [None, b"", b"\xff\xfe", b"[1, 2]", b"null", b'"text"', b"42"])
def test_anything_on_a_topic_is_described_in_one_line(value):
    line = describe(value)
    assert isinstance(line, str) and "\n" not in line


def test_a_prediction_and_a_dead_letter_are_described_by_their_fields():
    prediction = orjson.dumps(
        {"id": "e1", "prediction": 0.25, "model": "m", "model_version": "2", "source": {}, "latency_ms": 7}
    )
    assert "e1" in describe(prediction) and "0.2500" in describe(prediction)
    assert describe(orjson.dumps({"error": "InvalidJSON", "reason": "bad"})) == "DEAD LETTER InvalidJSON: bad"


@pytest.mark.parametrize(
    ("value", "latency"),
    [(b'{"latency_ms": 12}', 12), (None, -1), (b"[]", -1), (b"not json", -1), (b'{"latency_ms": "x"}', -1)],
)
def test_the_summary_takes_the_latency_of_predictions_only(value, latency):
    assert latency_of(value) == latency
