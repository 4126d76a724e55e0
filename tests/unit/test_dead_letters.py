from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from streams.codecs.dead_letters import dead_letter, record_key, replacement_for_refused
from streams.records import InputRecord, OutputRecord

LIMIT = 64 * 1024

# Values that grow when escaped or encoded: each would make a dead letter over 1 MiB if copied whole.
HOSTILE = {
    "quotes": b'"' * 700_000,  # each escapes to two bytes
    "control bytes": b"\x01" * 200_000,  # each escapes to six
    "not UTF-8": bytes(range(128, 256)) * 8_000,  # base64: four bytes for three
    "emoji cut anywhere": "🙂".encode() * 100_000,
}


def letter(value: bytes | None, key: bytes | None = b"k", limit: int = LIMIT) -> dict[str, object]:
    record = InputRecord("in", 2, 7, 1_000, key, value)
    out = dead_letter(
        record, error="PayloadTooLarge", message="too big", topic="dlq", pipeline="p", now_ms=5, max_copy_bytes=limit
    )
    assert out.topic == "dlq" and out.partition == 2
    return orjson.loads(out.value)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_dead_letter_of_a_hostile_value_stays_under_the_bound_and_says_what_it_dropped(name):
    value = HOSTILE[name]
    record = InputRecord("in", 2, 7, 1_000, b"k", value)
    out = dead_letter(
        record, error="PayloadTooLarge", message="too big", topic="dlq", pipeline="p", now_ms=5, max_copy_bytes=LIMIT
    )
    assert len(out.value) <= LIMIT + 1_000
    body = orjson.loads(out.value)
    assert body["value_truncated"] is True
    assert body["value_bytes"] == len(value)
    assert body["value_sha256"] == hashlib.sha256(value).hexdigest()
    kept = body["value"].encode() if "value" in body else base64.b64decode(body["value_base64"])
    assert value.startswith(kept) and len(kept) > LIMIT // 8, "a useful prefix of the value is kept"
    assert body["source"] == {"topic": "in", "partition": 2, "offset": 7, "timestamp": 1_000}


def test_a_value_that_fits_is_kept_whole_with_no_truncation_fields():
    body = letter(b'{"id": "x", "features": "\x01"}')
    assert body["value"] == '{"id": "x", "features": "\x01"}'
    assert "value_truncated" not in body
    assert letter(b"\xff\xfe")["value_base64"] == base64.b64encode(b"\xff\xfe").decode()
    assert letter(None)["value"] is None


def test_a_long_key_is_truncated_in_the_body_and_hashed_as_the_record_key():
    key = b"\x02" * 300_000
    record = InputRecord("in", 0, 1, 1_000, key, b"{}")
    out = dead_letter(record, error="E", message="m", topic="dlq", pipeline="p", now_ms=5, max_copy_bytes=LIMIT)
    body = orjson.loads(out.value)
    assert len(out.value) <= LIMIT + 1_000
    assert body["key_truncated"] is True and body["key_bytes"] == len(key)
    assert out.key == record_key(key, LIMIT) == b"sha256:" + hashlib.sha256(key).hexdigest().encode()
    assert record_key(b"short", LIMIT) == b"short"


def test_a_huge_reason_is_cut():
    record = InputRecord("in", 0, 1, 1_000, None, b"{}")
    out = dead_letter(record, error="ModelError", message="x" * 10**6, topic="dlq", pipeline="p", now_ms=5)
    assert len(orjson.loads(out.value)["reason"]) == 2_000


def test_a_refused_output_is_replaced_by_a_minimal_dead_letter_naming_its_source_position():
    prediction = OutputRecord(
        "out",
        b"k" * 2_000_000,
        orjson.dumps({"id": "e1", "prediction": 0.5, "source": {"topic": "in", "partition": 1, "offset": 9}}),
        1,
        (("trace-id", b"abc"),),
    )
    out = replacement_for_refused(
        prediction, "RecordTooLarge", topic="dlq", pipeline="p", now_ms=5, max_copy_bytes=LIMIT
    )
    body = orjson.loads(out.value)
    assert (out.topic, out.partition, out.headers) == ("dlq", 1, ())
    assert body["error"] == "OutputRefused" and body["output_refused"] is True
    assert body["source"] == {"topic": "in", "partition": 1, "offset": 9}
    assert "RecordTooLarge" in body["reason"]
    assert len(out.value) < 1_000 and len(out.key or b"") < 100

    refused_letter = OutputRecord("dlq", b"k", orjson.dumps({"error": "InvalidJSON", "source": {"offset": 3}}), 0)
    body = orjson.loads(
        replacement_for_refused(refused_letter, "why", topic="dlq", pipeline="p", now_ms=5, max_copy_bytes=LIMIT).value
    )
    assert body["error"] == "InvalidJSON" and body["source"] == {"offset": 3}


def test_headers_too_large_for_a_dead_letter_are_dropped_and_the_dead_letter_says_so():
    record = InputRecord("in", 0, 1, 1_000, b"k", b"\x01" * 10_000, (("trace-id", b"t"), ("blob", b"x" * 1_000_000)))
    out = dead_letter(record, error="E", message="m", topic="dlq", pipeline="p", now_ms=5, headers=record.headers)
    assert out.headers == () and orjson.loads(out.value)["headers_dropped"] is True
    small = dead_letter(record, error="E", message="m", topic="dlq", pipeline="p", now_ms=5, headers=(("a", b"b"),))
    assert small.headers == (("a", b"b"),) and "headers_dropped" not in orjson.loads(small.value)


def test_a_minimal_dead_letter_carries_no_headers_they_may_be_what_was_too_large():
    refused = OutputRecord("out", b"k", b'{"source": {"offset": 1}}', 0, (("blob", b"x" * 1_000_000),))
    out = replacement_for_refused(refused, "too large", topic="dlq", pipeline="p", now_ms=5, max_copy_bytes=LIMIT)
    assert out.headers == ()
