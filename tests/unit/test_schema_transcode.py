"""Events in a registry's wire format decode to the JSON objects they encode; each fault of the
event is a dead letter naming its schema and reason; a registry that cannot answer makes them wait."""

from __future__ import annotations

import asyncio
import io
import json
import struct

import fastavro
import orjson
import pytest

from streams.codecs import schema_transcode
from streams.codecs.avro_safety import UnsafeSchema, check_safe
from streams.codecs.codec import EventSchema, TensorField, decode
from streams.codecs.schema_transcode import SchemaTranscoder, WriterSchema
from streams.codecs.wire_format import schema_id_of
from streams.errors import RegistryUnavailable
from streams.records import InputRecord, TranscodedRecord, UndecodableRecord

EVENT_V1 = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "features", "type": {"type": "array", "items": "float"}},
    ],
}
# A field added with a default: events of both versions give the same features.
EVENT_V2 = {**EVENT_V1, "fields": [*EVENT_V1["fields"], {"name": "channel", "type": "string", "default": "web"}]}
SCHEMA = EventSchema("id", (TensorField("features", (3,)),))


class Registry:
    """A lookup over a dict; ``away`` makes the next fetches fail as a registry that cannot be reached."""

    def __init__(self, schemas: dict[int, dict | str]) -> None:
        self.schemas = schemas
        self.away = 0
        self.asked: list[int] = []

    async def fetch(self, schema_id: int) -> WriterSchema | None:
        self.asked.append(schema_id)
        if self.away:
            self.away -= 1
            raise RegistryUnavailable("connection refused")
        schema = self.schemas.get(schema_id)
        if schema is None:
            return None
        if isinstance(schema, str):
            return WriterSchema("JSON", schema)
        return WriterSchema("AVRO", json.dumps(schema))


def avro(schema_id: int, schema: dict, doc: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), doc)
    return b"\x00" + struct.pack(">I", schema_id) + out.getvalue()


def record(value: bytes | None, offset: int = 0) -> InputRecord:
    return InputRecord("t", 0, offset, 1_000, b"k", value)


async def transcoded(values, registry: Registry, fmt: str = "avro"):
    return await SchemaTranscoder(fmt, registry).transcode([record(v, i) for i, v in enumerate(values)])


async def test_avro_events_of_two_compatible_versions_decode_to_the_same_features_as_their_json():
    registry = Registry({1: EVENT_V1, 2: EVENT_V2})
    docs = [{"id": "a", "features": [1.0, 2.0, 3.5]}, {"id": "b", "features": [0.0, -1.0, 2.0], "channel": "app"}]
    out = await transcoded([avro(1, EVENT_V1, docs[0]), avro(2, EVENT_V2, docs[1])], registry)
    assert all(type(r) is TranscodedRecord for r in out)
    assert out[0].wire_value == avro(1, EVENT_V1, docs[0]), "what the topic held, for dead letters"
    from_avro = decode(out, SCHEMA)
    from_json = decode([record(orjson.dumps(d)) for d in docs], SCHEMA)
    assert from_avro.ids == from_json.ids == ["a", "b"]
    assert (from_avro.inputs[0] == from_json.inputs[0]).all()
    assert registry.asked == [1, 2]
    await transcoded([avro(1, EVENT_V1, docs[0])], registry)  # a new transcoder asks again; this one keeps them


async def test_schemas_are_fetched_once():
    registry = Registry({1: EVENT_V1})
    transcoder = SchemaTranscoder("avro", registry)
    value = avro(1, EVENT_V1, {"id": "a", "features": [1.0, 2.0, 3.0]})
    for _ in range(3):
        await transcoder.transcode([record(value)])
    assert registry.asked == [1]


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [
        (b'{"id": "a", "features": [1, 2, 3]}', "NotWireFormat", "a JSON value? set format"),
        (b"\x00\x00\x01", "NotWireFormat", "too short"),
        (b"\x07\x00\x00\x00\x01abc", "NotWireFormat", "0x07"),
        (b"\x00\x00\x00\x00\x09abc", "UnknownSchema", "schema 9 is not in the schema registry"),
        (avro(1, EVENT_V1, {"id": "a", "features": [1.0, 2.0, 3.0]})[:-3], "Truncated", "before its schema 1"),
        (avro(1, EVENT_V1, {"id": "a", "features": [1.0, 2.0, 3.0]}) + b"zz", "SchemaMismatch", "2 byte(s) left over"),
    ],
)
async def test_each_fault_of_the_event_is_a_dead_letter_naming_the_schema_and_why(value, error, reason):
    (out,) = await transcoded([value], Registry({1: EVENT_V1}))
    assert type(out) is UndecodableRecord and out.error == error and reason in out.message
    assert out.value == value
    rejected = decode([out], SCHEMA).rejects[0]
    assert (rejected.error, rejected.message) == (error, out.message)


async def test_a_field_the_model_cannot_take_is_the_decoders_dead_letter_as_for_json():
    strings = {
        **EVENT_V1,
        "fields": [EVENT_V1["fields"][0], {"name": "features", "type": {"type": "array", "items": "string"}}],
    }
    out = await transcoded([avro(3, strings, {"id": "a", "features": ["1", "2", "3"]})], Registry({3: strings}))
    (rejected,) = decode(out, SCHEMA).rejects
    assert rejected.error == "WrongType"


async def test_a_schema_of_another_type_dead_letters_its_events():
    (out,) = await transcoded([b"\x00\x00\x00\x00\x05{}"], Registry({5: '{"type": "object"}'}))
    assert out.error == "SchemaMismatch" and "JSON schema; this pipeline reads AVRO" in out.message


async def test_json_schema_events_are_the_json_after_their_header():
    value = b"\x00\x00\x00\x00\x05" + orjson.dumps({"id": "j", "features": [1, 2, 3]})
    (out,) = await transcoded([value], Registry({5: '{"type": "object"}'}), fmt="json_schema")
    assert decode([out], SCHEMA).ids == ["j"]


async def test_tombstones_and_empty_values_pass_to_the_decoder_which_names_them():
    out = await transcoded([None, b""], Registry({}))
    assert [r.error for r in decode(out, SCHEMA).rejects] == ["Tombstone", "EmptyValue"]


async def test_while_the_registry_cannot_answer_the_batch_waits_and_no_event_is_dead_lettered(monkeypatch):
    monkeypatch.setattr(schema_transcode, "RETRY_FIRST_S", 0.001)
    registry = Registry({1: EVENT_V1})
    registry.away = 3
    (out,) = await transcoded([avro(1, EVENT_V1, {"id": "a", "features": [1.0, 2.0, 3.0]})], registry)
    assert type(out) is TranscodedRecord and registry.asked == [1, 1, 1, 1]


async def test_an_unknown_id_is_asked_about_again_later(monkeypatch):
    registry = Registry({})
    transcoder = SchemaTranscoder("avro", registry)
    value = avro(4, EVENT_V1, {"id": "a", "features": [1.0, 2.0, 3.0]})
    assert type((await transcoder.transcode([record(value)]))[0]) is UndecodableRecord
    await transcoder.transcode([record(value)])
    assert registry.asked == [4], "not asked again at once"
    registry.schemas[4] = EVENT_V1
    monkeypatch.setattr(schema_transcode, "UNKNOWN_FOR_S", 0.0)
    assert type((await transcoder.transcode([record(value)]))[0]) is TranscodedRecord


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (
            {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]},
            "recursive",
        ),
        ({"type": "array", "items": "null"}, "items that take no bytes"),
        (
            {"type": "array", "items": {"type": "record", "name": "Empty", "fields": []}},
            "items that take no bytes",
        ),
    ],
)
async def test_schemas_that_could_make_a_few_bytes_cost_unbounded_memory_or_stack_are_refused(schema, why):
    with pytest.raises(UnsafeSchema, match=why):
        check_safe(fastavro.parse_schema(schema))
    # A billion nulls in six bytes: refused by the schema, never read.
    value = b"\x00\x00\x00\x00\x06" + b"\x80\xa8\xd6\xb9\x07\x00"
    (out,) = await transcoded([value], Registry({6: schema}))
    assert out.error == "SchemaMismatch" and why in out.message


def test_the_wire_formats_header():
    assert schema_id_of(b"\x00\x00\x00\x01\x02rest") == 258


async def test_transcoding_does_not_block_the_loop_while_the_registry_is_away(monkeypatch):
    monkeypatch.setattr(schema_transcode, "RETRY_FIRST_S", 0.05)
    registry = Registry({1: EVENT_V1})
    registry.away = 10**9
    task = asyncio.ensure_future(transcoded([avro(1, EVENT_V1, {"id": "a", "features": [1.0, 2.0, 3.0]})], registry))
    await asyncio.sleep(0.2)
    assert not task.done() and len(registry.asked) >= 2
    registry.away = 0
    (out,) = await task
    assert type(out) is TranscodedRecord


async def test_named_types_reused_in_a_tree_are_measured_once_and_refused():
    # 2^40 nulls in zero bytes; walking each reference again would take years, not milliseconds.
    levels = [{"type": "record", "name": "L0", "fields": [{"name": "n", "type": "null"}]}]
    for k in range(1, 41):
        fields = [{"name": "a", "type": levels[-1]}, {"name": "b", "type": f"L{k - 1}"}]
        levels.append({"type": "record", "name": f"L{k}", "fields": fields})
    (out,) = await transcoded([b"\x00\x00\x00\x00\x08"], Registry({8: levels[-1]}))
    assert out.error == "SchemaMismatch" and "decodes to" in out.message


async def test_a_value_that_could_decode_past_the_payload_limit_is_not_decoded():
    wide = {"type": "record", "name": "Wide", "fields": [{"name": f"f{i}", "type": "null"} for i in range(100)]}
    wide["fields"].append({"name": "flag", "type": "boolean"})
    bomb = {"type": "record", "name": "Bomb", "fields": [{"name": "items", "type": {"type": "array", "items": wide}}]}
    count = 10_000
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(bomb), {"items": [{"flag": True}] * count})
    value = b"\x00\x00\x00\x00\x09" + body.getvalue()  # 10 kB that would decode to about 10 MB of JSON
    transcoder = SchemaTranscoder("avro", Registry({9: bomb}), max_json_bytes=1 << 20)
    (out,) = await transcoder.transcode([record(value)])
    assert out.error == "PayloadTooLarge" and "the limit is 1,048,576" in out.message


async def test_the_answers_that_came_are_kept_and_only_the_others_asked_again(monkeypatch):
    monkeypatch.setattr(schema_transcode, "RETRY_FIRST_S", 0.001)

    class HalfAway(Registry):
        async def fetch(self, schema_id):
            self.tried = [*getattr(self, "tried", []), schema_id]
            if schema_id == 2 and self.tried.count(2) < 3:
                raise RegistryUnavailable("timeout")
            return await super().fetch(schema_id)

    registry = HalfAway({1: EVENT_V1, 2: EVENT_V2})
    docs = {"id": "a", "features": [1.0, 2.0, 3.0]}
    out = await transcoded([avro(1, EVENT_V1, docs), avro(2, EVENT_V2, docs)], registry)
    assert [type(r) for r in out] == [TranscodedRecord, TranscodedRecord]
    assert registry.tried.count(1) == 1 and registry.tried.count(2) == 3


async def test_a_flood_of_new_ids_is_asked_a_few_at_a_time(monkeypatch):
    at_once = {"now": 0, "most": 0}

    class Counting(Registry):
        async def fetch(self, schema_id):
            at_once["now"] += 1
            at_once["most"] = max(at_once["most"], at_once["now"])
            await asyncio.sleep(0)
            at_once["now"] -= 1
            return None

    values = [b"\x00" + struct.pack(">I", i) + b"x" for i in range(500)]
    out = await transcoded(values, Counting({}))
    assert {r.error for r in out} == {"UnknownSchema"}
    assert at_once["most"] <= schema_transcode.MAX_CONCURRENT_LOOKUPS
