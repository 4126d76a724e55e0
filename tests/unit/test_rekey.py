"""The re-keying stage (streams.kafka.rekey): each event keyed by its field and routed, unchanged,
to the partition Kafka's default partitioner gives the key; an event without a usable key is a
dead letter naming its original position and why."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import OutputRefused
from streams.kafka.rekey import SOURCE_HEADER, Rekeying, key_hash
from streams.records import MAX_KEY_BYTES, InputRecord, UndecodableRecord
from tests.fakes import ListSink

PARTITIONS = 6
NOW = 1_700_000_000_000


def stage(sink: ListSink | None = None, window: tuple[int | None, int | None] = (None, None)) -> Rekeying:
    return Rekeying(
        name="fraud",
        field="account",
        topic="fraud-repartition",
        partitions=PARTITIONS,
        sink=sink or ListSink(),
        dead_letter_topic="dlq",
        max_payload_bytes=10_000,
        dead_letter_copy_bytes=1_000,
        timestamp_window_ms=window,
        clock_ms=lambda: NOW,
    )


def rec(offset: int, value: bytes | None, partition: int = 2, headers=(("trace", b"t"),), ts: int = NOW) -> InputRecord:
    return InputRecord("tx", partition, offset, ts + offset, b"producer-key", value, headers)


# Java's Utils.murmur2, from Kafka's own UtilsTest (as signed ints there): the default partitioner
# of every Kafka client takes it, made positive, modulo the partition count.
@pytest.mark.parametrize(
    ("key", "java_murmur2"),
    [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536), (b"abc", 479470107)],
)
def test_a_key_hashes_as_kafkas_default_partitioner_hashes_it(key, java_murmur2):
    assert key_hash(key) == java_murmur2 & 0x7FFFFFFF


async def test_an_event_is_routed_unchanged_keyed_by_its_field_to_its_keys_partition():
    events = [
        rec(0, b'{"account": "acct-7", "amount": 1}'),
        rec(1, b'{"amount": 2, "account": 12345}'),
        rec(2, '{"account": "ünïcode"}'.encode()),
    ]
    rekeying = stage()
    scored = await rekeying.finish(events, rekeying.decode(events))
    assert [o.key for o in scored.outputs] == [b"acct-7", b"12345", "ünïcode".encode()]
    for event, out in zip(events, scored.outputs, strict=True):
        assert out.topic == "fraud-repartition" and out.value == event.value
        assert out.to_partition == key_hash(out.key) % PARTITIONS
        assert out.partition == 2, "the input partition: its transaction holds the record"
        assert out.timestamp == event.timestamp, "event time is kept: windows are measured by it"
        assert list(out.headers) == [("trace", b"t"), (SOURCE_HEADER, f"tx:2:{event.offset}".encode())]
    assert scored.outcome.scored == 3 and scored.outcome.dead_lettered == 0


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, "Tombstone"),
        (b"", "InvalidJSON"),
        (b"{nope", "InvalidJSON"),
        (b"[1]", "NotAnObject"),
        (b'{"amount": 1}', "MissingKey"),
        (b'{"account": null}', "MissingKey"),
        (b'{"account": true}', "WrongType"),
        (b'{"account": 1.5}', "WrongType"),
        (b'{"account": ["a"]}', "WrongType"),
        (b'{"account": "' + b"k" * (MAX_KEY_BYTES + 1) + b'"}', "KeyTooLong"),
        (b'{"account": "a", "pad": "' + b"p" * 10_000 + b'"}', "PayloadTooLarge"),
    ],
)
async def test_an_event_without_a_usable_key_is_a_dead_letter_at_its_original_position(value, error):
    sink = ListSink()
    rekeying = stage(sink)
    events = [rec(0, b'{"account": "a"}'), rec(1, value), rec(2, b'{"account": "b"}')]
    scored = await rekeying.finish(events, rekeying.decode(events))
    await rekeying.delivery.deliver(scored.outputs)
    assert [r.key for r in sink.records if r.topic == "fraud-repartition"] == [b"a", b"b"]
    [letter] = [orjson.loads(r.value) for r in sink.records if r.topic == "dlq"]
    assert letter["error"] == error and letter["pipeline"] == "fraud"
    assert (letter["source"]["topic"], letter["source"]["partition"], letter["source"]["offset"]) == ("tx", 2, 1)
    assert scored.outcome.errors == {error: 1}


async def test_a_record_the_consumer_could_not_decode_is_a_dead_letter():
    rekeying = stage()
    events = [UndecodableRecord("tx", 0, 9, 0, "CRC mismatch")]
    scored = await rekeying.finish(events, rekeying.decode(events))
    [letter] = [orjson.loads(r.value) for r in scored.outputs]
    assert letter["error"] == "Undecodable" and "CRC mismatch" in letter["reason"]


@given(st.lists(st.one_of(st.text(max_size=40), st.integers(-(2**63), 2**64 - 1)), min_size=1, max_size=30))
async def test_every_string_or_integer_key_routes_and_equal_keys_share_a_partition(keys):
    rekeying = stage()
    events = [rec(i, orjson.dumps({"account": key})) for i, key in enumerate(keys)]
    scored = await rekeying.finish(events, rekeying.decode(events))
    assert [out.key for out in scored.outputs] == [str(key).encode("utf-8", "surrogatepass") for key in keys]
    assert [out.key for out in scored.outputs] == [rekeying.key_of(event) for event in events], "fast == careful"
    where: dict[bytes | None, int | None] = {}
    for out in scored.outputs:
        assert where.setdefault(out.key, out.to_partition) == out.to_partition


async def test_a_sluice_source_header_set_by_the_producer_is_replaced_not_kept():
    rekeying = stage()
    forged = rec(5, b'{"account": "a"}', headers=((SOURCE_HEADER, b"elsewhere:0:0"), ("trace", b"t")))
    [out] = (await rekeying.finish([forged], rekeying.decode([forged]))).outputs
    assert list(out.headers) == [("trace", b"t"), (SOURCE_HEADER, b"tx:2:5")]


@pytest.mark.parametrize(("ts", "why"), [(NOW + 3_600_000, "ahead"), (NOW - 86_400_000, "behind")])
async def test_an_event_whose_timestamp_the_repartition_topic_refuses_is_a_dead_letter(ts, why):
    # Kafka 4's defaults: up to an hour ahead, any time behind; here also at most 12 hours behind.
    rekeying = stage(window=(12 * 3_600_000, 3_600_000))
    events = [rec(0, b'{"account": "a"}', ts=NOW), rec(1, b'{"account": "b"}', ts=ts)]
    scored = await rekeying.finish(events, rekeying.decode(events))
    assert [o.key for o in scored.outputs if o.topic == "fraud-repartition"] == [b"a"]
    [letter] = [orjson.loads(o.value) for o in scored.outputs if o.topic == "dlq"]
    assert letter["error"] == "TimestampOutOfRange" and why in letter["reason"]


async def test_a_rekeyed_event_the_topic_refuses_becomes_a_dead_letter_at_its_original_position():
    class Refusing(ListSink):
        async def send(self, records):
            refused = [(r, "MessageSizeTooLargeError") for r in records if r.topic == "fraud-repartition"]
            await (await super().send([r for r in records if r.topic != "fraud-repartition"]))
            return _refuse(refused)

    sink = Refusing()
    rekeying = stage(sink)
    # Its body names another source and error: the dead letter must not take them from it.
    event = rec(7, b'{"account": "a", "source": {"topic": "forged"}, "error": "Forged"}')
    await rekeying.delivery.deliver((await rekeying.finish([event], rekeying.decode([event]))).outputs)
    [letter] = [orjson.loads(r.value) for r in sink.records]
    assert letter["error"] == "OutputRefused" and "fraud-repartition refused" in letter["reason"]
    assert (letter["source"]["topic"], letter["source"]["partition"], letter["source"]["offset"]) == ("tx", 2, 7)
    assert letter["value"] == event.value.decode()


async def _refuse(refused):
    if refused:
        raise OutputRefused(refused)
