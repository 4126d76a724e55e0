"""A shadow's records (streams.codecs.shadow_encode) and the served outputs' extra fields
(streams.codecs.encode, ``extra=``): valid JSON whatever the ids, names and numbers."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest

from streams.codecs.codec import Decoded
from streams.codecs.encode import encode_predictions, position_key
from streams.codecs.shadow_encode import encode_shadow
from streams.records import InputRecord


def records(n: int, topic: str = "in") -> list[InputRecord]:
    return [InputRecord(topic, i % 3, 100 + i, 1_000 + i, f"k{i}".encode(), b"{}") for i in range(n)]


def shadow(
    ids: list[Any],
    predictions: Any = None,
    served: Any = None,
    *,
    batch: list[InputRecord] | None = None,
    rows: list[int] | None = None,
    **names: Any,
) -> list[dict[str, Any]]:
    n = len(ids)
    batch = batch or records(n)
    names = {"name": "cand", "version": "2", "served_name": "champ", "served_version": "1", **names}
    out = encode_shadow(
        batch,
        np.arange(n) if rows is None else np.asarray(rows),
        ids,
        np.asarray(predictions if predictions is not None else [0.5] * n, dtype=np.float64),
        np.asarray(served if served is not None else [0.25] * n, dtype=np.float64),
        topic="out-shadow",
        **names,
    )
    assert [r.topic for r in out] == ["out-shadow"] * n
    # json.loads, not orjson: the standard library is the reference for valid JSON (it refuses NaN
    # only with parse_constant, so that is checked too).
    return [json.loads(r.value, parse_constant=_no_constants) for r in out]


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


@pytest.mark.parametrize(
    "ids",
    [
        ["plain", "ids", "only"],
        ['quote"d', "back\\slash", "new\nline", "tab\there", "é ü 中", "%d %s %b %%", '","', ""],
        [1, 2, 3_000_000_000_000],
        [1, "two", 3.5, True, None],
        ["first a string", 2, "then"],
        [-7, 'a"b'],
    ],
    ids=["plain", "escapes", "ints", "mixed", "str-first-mixed", "int-first-mixed"],
)
def test_every_id_comes_back_as_it_was_given(ids):
    bodies = shadow(ids)
    assert [b["id"] for b in bodies] == ids


def test_the_record_says_which_shadow_made_it_and_what_the_served_model_said():
    batch = records(3)
    bodies = shadow(["a", "b", "c"], [0.9, 0.1, 0.5], [0.2, 0.3, 0.4], batch=batch)
    assert bodies[1] == {
        "id": "b",
        "prediction": 0.1,
        "model": "cand",
        "model_version": "2",
        "shadow": True,
        "served": {"model": "champ", "model_version": "1", "prediction": 0.3},
        "source": {"topic": "in", "partition": 1, "offset": 101},
        "event_ts": 1_001,
    }


def test_names_and_versions_with_percent_signs_and_quotes_are_escaped():
    names = {"name": 'm%s"x', "version": "1%", "served_name": "%d\\", "served_version": '"v"%%'}
    [body] = shadow(["id"], **names)
    assert (body["model"], body["model_version"]) == ('m%s"x', "1%")
    assert body["served"]["model"] == "%d\\" and body["served"]["model_version"] == '"v"%%'


def test_a_source_topic_with_a_percent_sign_and_a_quote():
    [body] = shadow(["x"], batch=records(1, topic='in%d"'))
    assert body["source"]["topic"] == 'in%d"'


def test_nan_and_infinity_are_null_never_bare_nan():
    bodies = shadow([1, 2, 3], [math.nan, math.inf, 0.5], [0.5, 0.5, -math.inf])
    assert [b["prediction"] for b in bodies] == [None, None, 0.5]
    assert [b["served"]["prediction"] for b in bodies] == [0.5, 0.5, None]


def test_several_columns_are_written_as_a_list_per_event():
    bodies = shadow([1, 2], [[0.1, 0.9], [0.7, math.nan]], [[1.0], [2.0]])
    assert [b["prediction"] for b in bodies] == [[0.1, 0.9], [0.7, None]]
    assert [b["served"]["prediction"] for b in bodies] == [1.0, 2.0], "one column is one number"


def test_records_are_keyed_like_the_served_output_by_key_or_by_position():
    batch = records(4)
    rows = np.array([3, 1])
    args = (batch, rows, ["d", "b"], np.array([0.1, 0.2]), np.array([0.3, 0.4]))
    names = {"topic": "s", "name": "n", "version": "v", "served_name": "m", "served_version": "w"}
    by_key = encode_shadow(*args, **names)
    assert [r.key for r in by_key] == [b"k3", b"k1"]
    assert [orjson.loads(r.value)["source"]["offset"] for r in by_key] == [103, 101]
    by_position = encode_shadow(*args, **names, key_by_position=True)
    assert [r.key for r in by_position] == [position_key(batch[3]), position_key(batch[1])]


def test_an_unkeyed_record_stays_unkeyed():
    batch = [InputRecord("in", 0, 0, 0, None, b"{}")]
    [out] = encode_shadow(
        batch, np.array([0]), [1], np.array([0.1]), np.array([0.2]), topic="s", name="n", version="v",
        served_name="m", served_version="w",
    )  # fmt: skip
    assert out.key is None


def test_an_empty_batch_makes_no_records():
    assert shadow([]) == []


def decoded(ids: list[Any]) -> Decoded:
    n = len(ids)
    return Decoded(rows=np.arange(n), ids=ids, inputs=[np.zeros((n, 1), dtype=np.float32)])


def predictions(ids: list[Any], values: Any, **kwargs: Any) -> list[bytes]:
    out = encode_predictions(
        records(len(ids)),
        decoded(ids),
        np.asarray(values),
        topic="out",
        model_name="champ",
        model_version="1",
        now_ms=5_000,
        **kwargs,
    )
    return [r.value for r in out]


EXTRA = {"role": "fallback", "fallback": True, "fallback_reason": 'the champion raised "boom" at 100% \\ load'}


@pytest.mark.parametrize("ids", [["a", 'q"uote'], [1, 2], ["x", 3]], ids=["str", "int", "mixed"])
def test_extra_fields_go_into_every_output_as_valid_json(ids):
    plain = [json.loads(v) for v in predictions(ids, [0.25, 0.75])]
    flagged = [json.loads(v, parse_constant=_no_constants) for v in predictions(ids, [0.25, 0.75], extra=EXTRA)]
    assert flagged == [{**p, **EXTRA} for p in plain]
    assert [f["id"] for f in flagged] == ids


def test_without_extra_the_output_is_byte_for_byte_as_before():
    ids = ["a", "b", "c"]
    before = predictions(ids, [0.1, 0.2, 0.3])
    assert predictions(ids, [0.1, 0.2, 0.3], extra=None) == before
    assert predictions(ids, [0.1, 0.2, 0.3], extra={}) == before
    assert set(json.loads(before[0])) == {
        "id",
        "prediction",
        "model",
        "model_version",
        "source",
        "event_ts",
        "latency_ms",
    }


def test_extra_fields_with_nan_and_several_columns_and_features():
    bodies = [
        json.loads(v, parse_constant=_no_constants)
        for v in predictions(
            [1, 2],
            [[0.5, math.nan], [0.1, 0.2]],
            extra={"role": "canary"},
            features={"spend": np.array([3.0, 4.0])},
        )
    ]
    assert [b["prediction"] for b in bodies] == [[0.5, None], [0.1, 0.2]]
    assert [b["features"] for b in bodies] == [{"spend": 3.0}, {"spend": 4.0}]
    assert all(b["role"] == "canary" for b in bodies)
