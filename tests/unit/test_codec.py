from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.codecs import codec
from streams.codecs.careful_decode import decode_one
from streams.codecs.codec import EventSchema, TensorField, decode, encode_predictions, position_key
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


# Mostly the characters that could move a split of '["a","b"]' at '","'.
_id_texts = st.one_of(st.text(alphabet='",\\a\x00é'), st.text())
_ids = st.one_of(_id_texts, st.integers(min_value=-(2**63), max_value=2**63 - 1))


_finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(
    events=st.one_of(
        st.lists(st.tuples(_id_texts, _finite), max_size=8), st.lists(st.tuples(_ids, _finite), max_size=8)
    )
)
def test_ids_and_predictions_are_written_as_orjson_writes_each_of_them(events):
    """The encoder serialises a batch's ids (and predictions) in one call and splits the result:
    quotes, backslashes, '","' inside ids, empty strings and mixed types must not move a split."""
    ids, predictions = [i for i, _ in events], [p for _, p in events]
    n = len(events)
    records = [InputRecord("in", 0, i, 1_000, b"k", b"{}") for i in range(n)]
    decoded = codec.Decoded(np.arange(n), ids, [])
    out = encode_predictions(
        records,
        decoded,
        np.array(predictions, dtype=np.float64),
        topic="o",
        model_name="m",
        model_version="1",
        now_ms=0,
    )
    bodies = [orjson.loads(o.value) for o in out]
    assert [b["id"] for b in bodies] == ids
    assert [b["prediction"] for b in bodies] == predictions


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


# The fast path (streams.codecs.fast_decode, msgspec) against the careful path (decode_one, orjson),
# the reference: the fast path may only vouch for an event the careful path scores, with the
# same id (type and value) and the same tensors bit for bit. Anything else it hands back.


# The schema of the cases below: SCHEMA's fields, with room for values nested a thousand deep.
ROOMY = EventSchema(SCHEMA.id_field, SCHEMA.inputs, max_payload_bytes=1 << 20)


def vouched(values: list[bytes], schema: EventSchema = ROOMY) -> list[int]:
    """The positions of ``values`` the fast path vouches for, each checked against the careful path."""
    fast = codec.fast_decoder(schema)
    assert fast is not None
    positions, ids, inputs = fast.decode(values)
    assert len(ids) == len(positions) and all(len(a) == len(positions) for a in inputs)
    for row, position in enumerate(positions):
        event_id, arrays = decode_one(values[position], schema)  # raises if the careful path rejects it
        assert type(ids[row]) is type(event_id) and ids[row] == event_id, values[position]
        for batched, single in zip(inputs, arrays, strict=True):
            assert batched[row].tobytes() == single.tobytes(), values[position]
    return positions


def outcome(value: bytes | None, schema: EventSchema = ROOMY) -> str:
    """What ``decode`` makes of one value: "scored", or the reject's kind; the same inside a batch."""
    decoded = decode([record(0, value)], schema)
    alone = "scored" if len(decoded) else decoded.rejects[0].error
    neighbours = [orjson.dumps(event(7)), value, orjson.dumps(event(8))]
    batch = decode([record(i, v) for i, v in enumerate(neighbours)], schema)
    assert batch.ids[0] == "e7" and batch.ids[-1] == "e8"
    assert ("scored" if 1 in batch.rows.tolist() else batch.rejects[0].error) == alone
    return alone


def test_the_fast_path_vouches_for_every_demo_event_of_both_models():
    from app.demo_events import demo_events

    values = [e.value for e in demo_events(64, seed=9)]
    light = (TensorField("features", (32,)),)
    heavy = (*light, *(TensorField(f, ()) for f in ("amount", "merchant_risk", "foreign")))  # history from state
    for inputs in (light, heavy):
        assert vouched(values, EventSchema("id", inputs)) == list(range(64))


def test_the_fast_path_reads_events_whose_text_only_looks_like_big_numbers():
    # An exponent counts only in a number: hex and base32 ids, and prose, are not handed back.
    ids = ["550e8400-e29b-41d4-a716-446655440000", "01HXE123ZZE999", "9e123", "e100"]
    values = [orjson.dumps(event(0, id=i, note="model-e999 v2e100")) for i in ids]
    assert vouched(values) == [0, 1, 2, 3]


E = b'"id":"x","features":[1,2,3],"history":[[1,2],[3,4]]'
EDGE_CASES: list[tuple[str, bytes, str]] = [
    ("booleans are 1 and 0", b'{"id":"x","features":[true,false,1],"history":[[1,2],[3,4]]}', "scored"),
    ("numeric strings", b'{"id":"x","features":["1",2,3],"history":[[1,2],[3,4]]}', "WrongType"),
    ("null feature", b'{"id":"x","features":[null,2,3],"history":[[1,2],[3,4]]}', "WrongType"),
    ("integers beyond int64", b'{"id":"x","features":[18446744073709551615,-1,0],"history":[[1,2],[3,4]]}', "scored"),
    ("integers beyond uint64", b'{"id":"x","features":[1' + b"0" * 30 + b',-1,0],"history":[[1,2],[3,4]]}', "scored"),
    ("negative zero integer", b'{"id":"x","features":[-0,-0.0,0],"history":[[-0,2],[3,4]]}', "scored"),
    ("subnormal and underflow", b'{"id":"x","features":[5e-324,1e-400,1e-45],"history":[[1,2],[3,4]]}', "scored"),
    ("beyond float32", b'{"id":"x","features":[3.5e38,1,1e39],"history":[[1,2],[3,4]]}', "NonFinite"),
    ("beyond a double, read", b'{"id":"x","features":[1e400,1,2],"history":[[1,2],[3,4]]}', "InvalidJSON"),
    ("beyond a double, unread", b"{" + E + b',"other":1e400}', "InvalidJSON"),
    ("beyond a double, unread integer", b"{" + E + b',"other":1' + b"0" * 400 + b"}", "InvalidJSON"),
    ("just under a double's maximum, unread", b"{" + E + b',"other":1.7976931348623157e308}', "scored"),
    ("big exponent in an unread string", b"{" + E + b',"other":"e999 and 1' + b"2" * 300 + b'"}', "scored"),
    ("id at int64's minimum", b'{"id":-9223372036854775808,"features":[1,2,3],"history":[[1,2],[3,4]]}', "scored"),
    ("id at uint64's maximum", b'{"id":18446744073709551615,"features":[1,2,3],"history":[[1,2],[3,4]]}', "scored"),
    (
        "id beyond uint64 (a float)",
        b'{"id":18446744073709551616,"features":[1,2,3],"history":[[1,2],[3,4]]}',
        "WrongType",
    ),
    (
        "id beyond int64 (a float)",
        b'{"id":-9223372036854775809,"features":[1,2,3],"history":[[1,2],[3,4]]}',
        "WrongType",
    ),
    ("boolean id", b'{"id":true,"features":[1,2,3],"history":[[1,2],[3,4]]}', "WrongType"),
    ("float id", b'{"id":1.0,"features":[1,2,3],"history":[[1,2],[3,4]]}', "WrongType"),
    ("duplicate id, last wins", b"{" + E + b',"id":null}', "WrongType"),
    ("duplicate features, last wins", b"{" + E + b',"features":[1,2]}', "WrongShape"),
    ("duplicate features, last valid", b'{"id":"x","features":["a"],' + E[9:] + b"}", "scored"),
    ("escaped key", b'{"\\u0069d":"x","f\\u0065atures":[1,2,3],"history":[[1,2],[3,4]]}', "scored"),
    ("escaped duplicate key", b"{" + E + b',"f\\u0065atures":[4,5,6]}', "scored"),
    ("non-ASCII id", '{"id":"naïve ☃ 𝄞","features":[1,2,3],"history":[[1,2],[3,4]]}'.encode(), "scored"),
    ("escaped surrogate pair", b"{" + E + b',"other":"\\ud834\\udd1e"}', "scored"),
    ("lone escaped surrogate, unread", b"{" + E + b',"other":"\\ud800"}', "InvalidJSON"),
    ("not UTF-8, unread", b"{" + E + b',"other":"\xff"}', "InvalidJSON"),
    ("UTF-8 surrogate, unread", b"{" + E + b',"other":"\xed\xa0\x80"}', "InvalidJSON"),
    ("overlong UTF-8, unread", b"{" + E + b',"other":"\xc0\x80"}', "InvalidJSON"),
    ("beyond U+10FFFF, unread", b"{" + E + b',"other":"\xf4\x90\x80\x80"}', "InvalidJSON"),
    ("noncharacter U+FFFF, unread", b"{" + E + b',"other":"\xef\xbf\xbf"}', "scored"),
    ("control character, unread", b"{" + E + b',"other":"a\x01"}', "InvalidJSON"),
    ("bad literal, unread", b"{" + E + b',"other":tru}', "InvalidJSON"),
    ("trailing comma, unread", b"{" + E + b',"other":[1,]}', "InvalidJSON"),
    ("form feed is not whitespace", b"{" + E + b',\x0c"other":1}', "InvalidJSON"),
    ("whitespace everywhere", b' \t{ "id" : "x" ,\n"features":[ 1 , 2 ,3 ],\r"history":[[1,2],[3,4]] }\n', "scored"),
    ("byte order mark", b"\xef\xbb\xbf{" + E + b"}", "InvalidJSON"),
    ("trailing content", b"{" + E + b"} {}", "InvalidJSON"),
    ("nesting orjson accepts", b"{" + E + b',"other":' + b"[" * 1023 + b"]" * 1023 + b"}", "scored"),
    ("nesting orjson refuses", b"{" + E + b',"other":' + b"[" * 1024 + b"]" * 1024 + b"}", "InvalidJSON"),
]


@pytest.mark.parametrize(("value", "expected"), [c[1:] for c in EDGE_CASES], ids=[c[0] for c in EDGE_CASES])
def test_where_msgspec_and_orjson_differ_the_careful_path_decides(value, expected):
    assert outcome(value) == expected
    vouched([value])


def test_nesting_orjson_refuses_is_refused_even_with_a_raised_recursion_limit():
    deep = b"{" + E + b',"other":' + b"[" * 1500 + b"]" * 1500 + b"}"
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        assert vouched([deep]) == []
        assert outcome(deep) == "InvalidJSON"
    finally:
        sys.setrecursionlimit(previous)


def test_booleans_and_integers_are_read_as_the_careful_path_reads_them():
    value = b'{"id":7,"features":[true,false,18446744073709551615],"history":[[-0,1e-400],[2,123456789012345678]]}'
    assert vouched([value]) == [0]
    decoded = decode([record(0, value)], ROOMY)
    assert decoded.ids == [7]
    assert decoded.inputs[0][0].tolist() == [1.0, 0.0, float(np.float32(2.0**64))]
    assert decoded.inputs[1][0].tobytes() == np.array([[0, 0], [2, 123456789012345678]], dtype=np.float32).tobytes()


def test_events_the_fast_path_hands_back_are_merged_in_batch_order():
    docs = [orjson.dumps(event(i)) for i in range(6)]
    docs[1] = b'{"id":"e1","features":[1e-100,2,3],"history":[[1,2],[3,4]]}'  # scored, by the careful path
    docs[3] = orjson.dumps(event(3, features=["x", 1, 2]))  # rejected
    docs[4] = b'{"id":"e4","features":[4,5,6],"history":[[1,2],[3,4]],"note":"\\u00e9 1e400"}'  # careful, scored
    decoded = decode([record(i, v) for i, v in enumerate(docs)], SCHEMA)
    assert decoded.rows.tolist() == [0, 1, 2, 4, 5]
    assert decoded.ids == ["e0", "e1", "e2", "e4", "e5"]
    assert [(r.index, r.error) for r in decoded.rejects] == [(3, "WrongType")]
    for row, index in enumerate(decoded.rows.tolist()):
        alone = decode([record(0, docs[index])], SCHEMA)
        for batched, single in zip(decoded.inputs, alone.inputs, strict=True):
            assert batched[row].tobytes() == single[0].tobytes()


def test_a_batch_of_many_chunks_hands_back_exactly_the_events_it_must():
    # The fast path checks text a chunk of values at a time, and a chunk with a hit value by value.
    values = [orjson.dumps(event(i)) for i in range(300)]
    odd = {
        5: b"{" + E + b',"other":1e400}',  # InvalidJSON
        64: b"{" + E + b',"other":"\xff"}',  # InvalidJSON
        65: b"{" + E + b',"other":"at 1e100"}',  # scored, by the careful path
        200: "{" + E.decode() + ',"other":"\u00e9t\u00e9 \u2603"}',
        201: b"{" + E + b',"other":' + b"[" * 1100 + b"]" * 1100 + b"}",  # InvalidJSON
        299: b'{"id":99999999999999999999,"features":[1,2,3],"history":[[1,2],[3,4]]}',  # WrongType
    }
    for i, value in odd.items():
        values[i] = value if isinstance(value, bytes) else value.encode()
    assert vouched(values) == [i for i in range(300) if i not in (5, 64, 65, 201, 299)]
    decoded = decode([record(i, v) for i, v in enumerate(values)], ROOMY)
    assert [(r.index, r.error) for r in decoded.rejects] == [
        (5, "InvalidJSON"),
        (64, "InvalidJSON"),
        (201, "InvalidJSON"),
        (299, "WrongType"),
    ]
    assert decoded.rows.tolist() == [i for i in range(300) if i not in (5, 64, 201, 299)]
    assert decoded.ids[:6] == ["e0", "e1", "e2", "e3", "e4", "e6"]


def test_a_schema_one_struct_cannot_hold_is_decoded_by_the_careful_path():
    schema = EventSchema("id", (TensorField("v", (2,)), TensorField("v", (2,))))
    assert codec.fast_decoder(schema) is None
    decoded = decode([record(0, b'{"id":"a","v":[1,2]}'), record(1, b'{"id":"b","v":[1]}')], schema)
    assert decoded.ids == ["a"] and [r.error for r in decoded.rejects] == ["WrongShape"]
    assert decoded.inputs[1].tolist() == [[1.0, 2.0]]


def test_scalar_and_empty_shapes():
    schema = EventSchema("id", (TensorField("s", ()), TensorField("z", (0,)), TensorField("e", (2, 0))))
    values = [b'{"id":"a","s":1.5,"z":[],"e":[[],[]]}', b'{"id":"b","s":true,"z":[],"e":[[],[]]}']
    values += [b'{"id":"c","s":[1],"z":[],"e":[[],[]]}', b'{"id":"d","s":1,"z":[],"e":[[]]}']
    assert vouched(values, schema) == [0, 1]
    decoded = decode([record(i, v) for i, v in enumerate(values)], schema)
    assert decoded.inputs[0].tolist() == [1.5, 1.0] and decoded.inputs[1].shape == (2, 0)
    assert decoded.inputs[2].shape == (2, 2, 0)
    assert [r.error for r in decoded.rejects] == ["WrongShape", "WrongShape"]


def test_python_and_orjson_agree_on_which_bytes_are_utf8():
    # The fast path checks a value that is not ASCII with Python's strict codec, where orjson
    # checks it itself: the two must agree on every kind of sequence (boundaries of each byte).
    seconds = [b"", *(bytes([b]) for b in (0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2))]
    seconds += [bytes([b]) for b in (0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF)]
    tails = [b"", b"\x80", b"\xbf", b"\x80\x80", b"\xbf\xbf", b"A"]
    for lead in range(0x80, 0x100):
        for second in seconds:
            for tail in tails:
                text = bytes([lead]) + second + tail
                value = b'{"other":"' + text + b'"}'
                try:
                    orjson.loads(value)
                    by_orjson = True
                except orjson.JSONDecodeError:
                    by_orjson = False
                try:
                    value.decode("utf-8")
                    by_python = True
                except UnicodeDecodeError:
                    by_python = False
                assert by_python == by_orjson, value


_numbers = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(st.lists(_numbers, min_size=3, max_size=3), st.lists(_numbers, min_size=4, max_size=4))
def test_any_json_number_is_read_bit_for_bit_as_the_careful_path_reads_it(features, history):
    value = (
        f'{{"id":"x","features":[{",".join(features)}],'
        f'"history":[[{history[0]},{history[1]}],[{history[2]},{history[3]}]]}}'
    ).encode()
    scored = len(codec._decode_careful([record(0, value)], SCHEMA)) == 1
    # The fast path hands back only what the careful path rejects (a non-finite float32, or
    # InvalidJSON beyond a double) and numbers written with an exponent of three digits or more.
    big_exponent = re.search(r"[eE]\+?[0-9]{3}", value.decode()) is not None
    assert vouched([value]) == ([0] if scored and not big_exponent else [])


# Documents that are mostly well formed, with the things msgspec and orjson may read
# differently: hostile tokens (in read and in unread fields), escaped and duplicate keys,
# and now and then one damaged byte.
_features_tokens = st.one_of(
    _numbers, _numbers, st.integers(-(2**70), 2**70).map(str), st.sampled_from(["true", "false"])
)
_hostile_tokens = st.sampled_from(
    [
        *("null", "tru", "1e400", "-1e400", "1" + "0" * 320, "1e-400", "NaN", "01", "1.", '"1"', "{}", "[1,]", "1e999"),
        *('"\\ud800"', '"\\udc00x"', '"\\ud834\\udd1e"', '"\\u00e9"', '"\x01"', '"\\q"', '"\udc80"', '"\xff"'),
    ]
)
_unread_tokens = st.one_of(
    _features_tokens,
    st.integers(0, 9).flatmap(lambda k: _hostile_tokens if k == 0 else _features_tokens),
    st.text(max_size=6).map(lambda t: json.dumps(t, ensure_ascii=False)),
    st.lists(_numbers, max_size=3).map(lambda n: "[" + ",".join(n) + "]"),
    st.just('{"a":[1,{"b":"c"}],"d":null}'),
)
_keys = st.sampled_from(['"id"', '"features"', '"history"', '"other"', '"f\\u0065atures"', '"\\u0069d"', '"h"'])


@st.composite
def _documents(draw: st.DrawFn) -> bytes:
    def tokens(count: int) -> str:
        drawn = draw(st.lists(_features_tokens, min_size=count, max_size=count))
        if draw(st.integers(0, 15)) == 0:
            drawn[draw(st.integers(0, count - 1))] = draw(_hostile_tokens)
        return "[" + ",".join(drawn) + "]"

    fields = {
        '"id"': draw(st.sampled_from(['"x"', "7"]) if draw(st.integers(0, 3)) else _unread_tokens),
        '"features"': tokens(draw(st.sampled_from([3, 3, 3, 2]))),
        '"history"': "[" + ",".join(tokens(2) for _ in range(draw(st.sampled_from([2, 2, 2, 1])))) + "]",
    }
    pairs = [f"{k}:{v}" for k, v in fields.items() if draw(st.integers(0, 19)) > 0]
    pairs += [f"{draw(_keys)}:{draw(_unread_tokens)}" for _ in range(draw(st.integers(0, 3)))]
    pairs = draw(st.permutations(pairs))
    text = draw(st.sampled_from(["", " ", "\n", "\t"])).join(["{", ",".join(pairs), "}"])
    value = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 5)) == 0:  # one damaged byte: inserted, replaced or removed
        at = draw(st.integers(0, len(value) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        damaged = [value[:at] + byte + value[at:], value[:at] + byte + value[at + 1 :], value[:at] + value[at + 1 :]]
        value = draw(st.sampled_from(damaged)) or b"{}"
    return value


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_documents(), min_size=1, max_size=6))
def test_the_fast_path_never_vouches_for_what_the_careful_path_would_not_score(values):
    for shapes in (((3,), (2, 2)), ((3,),)):
        schema = EventSchema(
            "id", tuple(TensorField(f, s) for f, s in zip(("features", "history"), shapes, strict=False)), 1 << 20
        )
        together = vouched(values, schema)
        assert together == [i for i, v in enumerate(values) if vouched([v], schema) == [0]]


# Fields nested in objects (``field = ["payload", "features"]`` in the config).
NESTED = EventSchema(
    "id",
    (
        TensorField("payload.features", (3,), ("payload", "features")),
        TensorField("payload.meta.amount", (), ("payload", "meta", "amount")),
        TensorField("flat", ()),
    ),
    1 << 20,
)


def test_a_nested_field_is_read_by_its_path_and_each_fault_on_the_way_is_named():
    values = [
        b'{"id":1,"payload":{"features":[1,2,3],"meta":{"amount":5,"x":"y"},"other":{}},"flat":2}',
        b'{"id":2,"payload":{"features":[1,2,3]},"flat":2}',
        b'{"id":3,"payload":null,"flat":2}',
        b'{"id":4,"payload":[1],"flat":2}',
        b'{"id":5,"payload":{"features":[1,2,3],"meta":7},"flat":2}',
        b'{"id":6,"payload":{"features":[1,2,"a"],"meta":{"amount":1}},"flat":2}',
        b'{"id":7,"flat":2}',
        b'{"id":8,"payload":{"meta":{"amount":1},"features":[4,5,6]},"flat":3,"payload.features":[0,0,0]}',
    ]
    assert vouched(values, NESTED) == [0, 7]
    decoded = decode([record(i, v) for i, v in enumerate(values)], NESTED)
    assert decoded.ids == [1, 8]
    assert decoded.inputs[0].tolist() == [[1, 2, 3], [4, 5, 6]] and decoded.inputs[1].tolist() == [5, 1]
    assert [(r.index, r.error, r.message) for r in decoded.rejects] == [
        (1, "MissingField", "field 'payload.meta.amount' is missing"),
        (2, "WrongType", "field 'payload.features': 'payload' must be an object, holding 'features'"),
        (3, "WrongType", "field 'payload.features': 'payload' must be an object, holding 'features'"),
        (4, "WrongType", "field 'payload.meta.amount': 'payload.meta' must be an object, holding 'amount'"),
        (5, "WrongType", "field 'payload.features' must hold only numbers, shape [3]"),
        (6, "MissingField", "field 'payload.features' is missing"),
    ]


def test_a_path_inside_another_input_is_decoded_by_the_careful_path():
    inside = EventSchema("id", (TensorField("p", (1,)), TensorField("p.q", (), ("p", "q"))))
    assert codec.fast_decoder(inside) is None
    assert codec.fast_decoder(EventSchema("id", (TensorField("id.q", (), ("id", "q")),))) is None
    decoded = decode([record(0, b'{"id":"a","p":{"q":1}}')], inside)
    assert [r.error for r in decoded.rejects] == ["WrongType"]


_amounts = st.builds(lambda n: '{"amount":' + n + "}", _numbers)
_nested_values = st.one_of(
    _amounts,
    _amounts,
    _amounts,
    _unread_tokens,
    st.just("{}"),
    st.builds(lambda n, k: "{" + k + ":" + n + "}", _numbers, st.sampled_from(['"amount"', '"\\u0061mount"', '"x"'])),
)


def _one_in(n: int) -> st.SearchStrategy[bool]:
    # Not integers(0, n - 1) == 0: hypothesis favours small integers, and that one would be 0 far too often.
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def _nested_documents(draw: st.DrawFn) -> bytes:
    count = draw(st.sampled_from([3, 3, 3, 2]))
    features = "[" + ",".join(draw(st.lists(_features_tokens, min_size=count, max_size=count))) + "]"
    inner = [f'"features":{features}', f'"meta":{draw(_nested_values)}']
    inner += [f"{draw(_keys)}:{draw(_unread_tokens)}" for _ in range(draw(st.integers(0, 2)))]
    payload = "{" + ",".join(draw(st.permutations(inner))) + "}"
    if draw(_one_in(7)):
        payload = draw(_unread_tokens)
    pairs = ['"id":"x"', f'"payload":{payload}', f'"flat":{draw(_numbers)}']
    if draw(_one_in(5)):
        pairs.append(f'"payload":{draw(st.sampled_from([payload, "null", "{}"]))}')  # a duplicate key: the last counts
    pairs = [p for p in pairs if not draw(_one_in(15))]
    return ("{" + ",".join(draw(st.permutations(pairs))) + "}").encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_nested_documents(), min_size=1, max_size=6))
def test_for_nested_fields_too_the_fast_path_vouches_only_for_what_the_careful_path_scores(values):
    together = vouched(values, NESTED)
    assert together == [i for i, v in enumerate(values) if vouched([v], NESTED) == [0]]


def test_a_key_msgspec_cannot_name_is_read_by_the_careful_path():
    for schema in (
        EventSchema("id", (TensorField('p"q.x', (), ('p"q', "x")),)),
        EventSchema("id", (TensorField("a\\b", ()),)),
    ):
        assert codec.fast_decoder(schema) is None
        key = schema.inputs[0].keys
        doc = {"id": "e", key[0]: {key[1]: 2}} if len(key) == 2 else {"id": "e", key[0]: 2}
        decoded = decode([record(0, orjson.dumps(doc))], schema)
        assert decoded.ids == ["e"] and decoded.inputs[0].tolist() == [2.0]
