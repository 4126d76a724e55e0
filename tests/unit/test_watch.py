"""`sluice watch` turns whatever is on a topic into a line, never a traceback."""

from __future__ import annotations

import orjson
import pytest

from app.commands.watch import describe, summarise, timing_of


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
    ("value", "timing"),
    [
        (b'{"event_ts": 1000, "latency_ms": 12}', (1000, 12)),
        (None, None),
        (b"[]", None),
        (b"not json", None),
        (b'{"event_ts": 1000, "latency_ms": "x"}', None),
        (b'{"latency_ms": 12}', None),
        (b'{"event_ts": true, "latency_ms": 12}', None),
    ],
)
def test_the_summary_takes_the_timing_of_predictions_only(value, timing):
    assert timing_of(value) == timing


def test_a_summary_of_a_few_predictions_is_one_line_with_the_budget():
    line = summarise("out", [(0, 5), (10, 60), (20, 7)], 50)
    assert line == (
        "out: 3 predictions; latency measured by the worker (event time to scored): "
        "p50 7 ms, p99 60 ms, max 60 ms; 1 over the 50 ms budget"
    )
    assert summarise("out", [], 50) == "out: no predictions"
    assert "budget" not in summarise("out", [(0, 5)], None)


def test_the_summary_says_in_which_seconds_the_slowest_one_percent_happened():
    # 1,000 predictions over 10 s at 5 ms, but the 10 slowest (and a few more) all in second 6.
    timings = [(n * 10, 5) for n in range(1000)]
    timings[600:612] = [(6_000 + n, 80 + n) for n in range(12)]
    lines = summarise("out", timings, 50).splitlines()
    assert lines[0].endswith("p99 82 ms, max 91 ms; 12 over the 50 ms budget"), lines[0]
    assert lines[1] == "slowest 1% (10) by when they happened in the run: 6-7 s: 10; without second 6-7, p99 5 ms"


def test_a_tail_spread_over_the_run_shows_several_seconds():
    timings = [(n * 10, 5 + (n % 100 == 0) * 40) for n in range(1000)]
    line = summarise("out", timings, 50).splitlines()[1]
    assert line.startswith("slowest 1% (10) by when they happened in the run: ")
    assert ", other seconds: 7" in line
