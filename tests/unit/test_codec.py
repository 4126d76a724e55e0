from __future__ import annotations

import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import codec
from streams.codec import EventSchema, TensorField, decode, encode_predictions, position_key
from streams.records import InputRecord

SCHEMA = EventSchema(
    id_field="id",
    inputs=(TensorField("features", (3,)), TensorField("history", (2, 2))),
    max_payload_bytes=512,
)


def event(i: int, **overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {"id": f"e{i}", "features": [i, i + 0.5, -i], "history": [[1, 2], [3, i]]}
    doc.update(overrides)
    return doc


def record(offset: int, value: bytes | None, partition: int = 0) -> InputRecord:
    return InputRecord("in", partition, offset, 1_000 + offset, f"k{offset}".encode(), value)


def records_of(docs: list[dict[str, object]]) -> list[InputRecord]:
    return [record(i, orjson.dumps(d)) for i, d in enumerate(docs)]


def test_fast_path_builds_one_tensor_per_input():
    decoded = decode(records_of([event(i) for i in range(4)]), SCHEMA)
    assert decoded.rows.tolist() == [0, 1, 2, 3]
    assert decoded.ids == ["e0", "e1", "e2", "e3"]
    assert decoded.inputs[0].dtype == np.float32
    assert decoded.inputs[0].shape == (4, 3)
    assert decoded.inputs[1].shape == (4, 2, 2)
    assert decoded.inputs[0][2].tolist() == [2.0, 2.5, -2.0]
    assert decoded.rejects == []


BAD_VALUES: list[tuple[bytes | None, str]] = [
    (None, "Tombstone"),
    (b"", "EmptyValue"),
    (b"{not json", "InvalidJSON"),
    (b"[1, 2, 3]", "NotAnObject"),
    (orjson.dumps({"features": [1, 2, 3], "history": [[1, 2], [3, 4]]}), "MissingField"),
    (orjson.dumps(event(0, id=[1])), "WrongType"),
    (orjson.dumps(event(0, features=[1, 2])), "WrongShape"),
    (orjson.dumps(event(0, features=["a", "b", "c"])), "WrongType"),
    (orjson.dumps(event(0, history=[[1, 2], [3]])), "WrongShape"),
    # orjson refuses numbers beyond a double's range outright.
    (b'{"id": "x", "features": [1, 2, 1e400], "history": [[1, 2], [3, 4]]}', "InvalidJSON"),
    (orjson.dumps(event(0, features=[3.5e38, 1, 1e39])), "NonFinite"),
    (b'{"id": "x", "features": [1, 2, NaN], "history": [[1, 2], [3, 4]]}', "InvalidJSON"),
    (orjson.dumps(event(0, pad="x" * 600)), "PayloadTooLarge"),
    (b"\xff\xfe\x00garbage", "InvalidJSON"),
]


@pytest.mark.parametrize(("value", "error"), BAD_VALUES, ids=[e for _, e in BAD_VALUES])
def test_a_bad_event_is_rejected_with_its_reason_and_its_neighbours_still_decode(value, error):
    batch = [record(0, orjson.dumps(event(0))), record(1, value), record(2, orjson.dumps(event(2)))]
    decoded = decode(batch, SCHEMA)
    assert decoded.rows.tolist() == [0, 2]
    assert decoded.ids == ["e0", "e2"]
    assert decoded.inputs[0].shape == (2, 3)
    assert [(r.index, r.error) for r in decoded.rejects] == [(1, error)]
    assert decoded.rejects[0].message


def test_a_batch_of_only_bad_events_yields_empty_inputs_of_the_right_shape():
    decoded = decode([record(0, b"nope"), record(1, None)], SCHEMA)
    assert len(decoded) == 0
    assert decoded.inputs[0].shape == (0, 3)
    assert decoded.inputs[1].shape == (0, 2, 2)
    assert len(decoded.rejects) == 2


def test_integer_ids_are_kept_as_integers():
    decoded = decode(records_of([event(0, id=42)]), SCHEMA)
    assert decoded.ids == [42]


def test_encoded_predictions_carry_id_key_model_source_and_latency():
    records = records_of([event(0), event(1)])
    decoded = decode(records, SCHEMA)
    out = encode_predictions(
        records,
        decoded,
        np.array([0.25, 0.75], dtype=np.float32),
        topic="out",
        model_name="m",
        model_version="3",
        now_ms=1_010,
    )
    assert [o.topic for o in out] == ["out", "out"]
    assert [o.key for o in out] == [b"k0", b"k1"]
    assert [o.partition for o in out] == [0, 0], "outputs follow their input's partition"
    body = orjson.loads(out[1].value)
    assert body == {
        "id": "e1",
        "prediction": 0.75,
        "model": "m",
        "model_version": "3",
        "source": {"topic": "in", "partition": 0, "offset": 1},
        "event_ts": 1_001,
        "latency_ms": 9,
    }
    assert math.isclose(orjson.loads(out[0].value)["prediction"], 0.25)


def test_the_fast_encoding_writes_the_same_json_as_a_dict_would_even_for_awkward_names():
    docs = [event(0, id='naïve "quoted" %s'), event(1, id=7), event(2)]
    records = [InputRecord('odd "topic" 100%', 3, 10 + i, 1_000 + i, b"k", orjson.dumps(d)) for i, d in enumerate(docs)]
    decoded = decode(records, SCHEMA)
    predictions = np.array([1e-7, 0.5, 123456.789], dtype=np.float32)
    names = {"model_name": 'm "x" 50%d', "model_version": "v%r"}
    fast = encode_predictions(records, decoded, predictions, topic="out", now_ms=2_000, **names)
    reference = [
        {
            "id": d["id"],
            "prediction": p,
            "model": 'm "x" 50%d',
            "model_version": "v%r",
            "source": {"topic": 'odd "topic" 100%', "partition": 3, "offset": 10 + i},
            "event_ts": 1_000 + i,
            "latency_ms": 1_000 - i,
        }
        for i, (d, p) in enumerate(zip(docs, predictions.tolist(), strict=True))
    ]
    assert [orjson.loads(o.value) for o in fast] == reference
    keyed = encode_predictions(records, decoded, predictions, topic="out", now_ms=2_000, key_by_position=True, **names)
    assert (
        [o.key for o in keyed]
        == [position_key(r) for r in records]
        == [b'odd "topic" 100%:3:10', *[f'odd "topic" 100%:3:{o}'.encode() for o in (11, 12)]]
    )


def test_non_finite_and_multi_output_predictions_are_still_valid_json():
    records = records_of([event(0), event(1)])
    decoded = decode(records, SCHEMA)
    nan = encode_predictions(
        records, decoded, np.array([np.nan, 1.0]), topic="o", model_name="m", model_version="1", now_ms=0
    )
    assert orjson.loads(nan[0].value)["prediction"] is None
    multi = encode_predictions(
        records, decoded, np.array([[0.1, 0.9], [0.4, 0.6]]), topic="o", model_name="m", model_version="1", now_ms=0
    )
    assert orjson.loads(multi[1].value)["prediction"] == [0.4, 0.6]


# Leaves a producer might put where numbers belong: numbers of every size, booleans, numeric
# strings, nulls. Only numbers and booleans are features; the rest must be WrongType however
# the event is batched.
_leaves = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.sampled_from(["1", "2.5", "1e3", "x"]),
    st.none(),
)
_features = st.one_of(
    st.lists(_leaves, min_size=3, max_size=3),
    st.lists(st.integers(-5, 5), min_size=2, max_size=4),  # wrong shape
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.integers(),
)
_history = st.one_of(
    st.lists(st.lists(_leaves, min_size=2, max_size=2), min_size=2, max_size=2),
    st.just([[1, 2], [3]]),  # ragged
)
_values = st.one_of(
    st.builds(
        lambda i, f, h: json.dumps({"id": i, "features": f, "history": h}).encode(),
        st.one_of(st.text(max_size=4), st.integers(-3, 3), st.booleans()),
        _features,
        _history,
    ),
    st.sampled_from([b"", b"{not json", b"[1]", b"\xff\xfe"]),
    st.none(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_values, min_size=1, max_size=8))
def test_an_event_decodes_the_same_inside_any_batch_as_alone(values):
    batch = [record(i, v) for i, v in enumerate(values)]
    together = decode(batch, SCHEMA)
    rows = together.rows.tolist()
    for i, one in enumerate(batch):
        alone = decode([one], SCHEMA)
        if len(alone):
            assert i in rows, f"event {values[i]!r} is scored alone but rejected in its batch"
            row = rows.index(i)
            assert together.ids[row] == alone.ids[0]
            for batched, single in zip(together.inputs, alone.inputs, strict=True):
                assert batched[row].tobytes() == single[0].tobytes()
        else:
            assert i not in rows, f"event {values[i]!r} is rejected alone but scored in its batch"
            [reject] = [r for r in together.rejects if r.index == i]
            assert (reject.error, reject.message) == (alone.rejects[0].error, alone.rejects[0].message)


def test_booleans_are_features_and_numeric_strings_are_not_whatever_the_batch():
    flags = orjson.dumps(event(0, features=[True, False, True]))
    strings = orjson.dumps(event(1, features=["1", "2.5", "1e3"]))
    for batch in ([flags], [strings], [flags, strings], [strings, flags]):
        decoded = decode([record(i, v) for i, v in enumerate(batch)], SCHEMA)
        for i, value in enumerate(batch):
            if value == flags:
                row = decoded.rows.tolist().index(i)
                assert decoded.inputs[0][row].tolist() == [1.0, 0.0, 1.0]
            else:
                assert [r.error for r in decoded.rejects if r.index == i] == ["WrongType"]


def test_a_batch_bigger_than_the_decode_bound_is_decoded_in_slices_with_the_same_result(monkeypatch):
    docs = [event(i) for i in range(10)]
    docs[4] = {"id": "bad"}
    whole = decode(records_of(docs), SCHEMA)
    monkeypatch.setattr(codec, "MAX_DECODE_BYTES", 150)  # about two events per slice
    sliced = decode(records_of(docs), SCHEMA)
    assert sliced.rows.tolist() == whole.rows.tolist()
    assert sliced.ids == whole.ids
    assert [r.index for r in sliced.rejects] == [4]
    for a, b in zip(sliced.inputs, whole.inputs, strict=True):
        assert np.array_equal(a, b)
