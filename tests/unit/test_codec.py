from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

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
