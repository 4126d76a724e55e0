"""``sluice produce --format``: demo events written with confluent-kafka's serializers, their schema
registered under the topic's subject, read back by a pipeline of the same format as the JSON they were."""

from __future__ import annotations

import uuid

import pytest

from app.config import load_config
from app.demo_events import demo_events
from app.demo_formats import demo_writer
from app.schema_registry import RegistryLookup, registry_client
from streams.codecs.codec import EventSchema, TensorField, decode
from streams.codecs.schema_transcode import SchemaTranscoder
from streams.records import InputRecord
from tests.unit.test_config import GOOD, write

SCHEMA = EventSchema("id", (TensorField("features", (32,)),))


def config_with_registry(tmp_path):
    url = f"mock://demo-{uuid.uuid4().hex[:8]}"
    text = GOOD.replace("[pipelines.p]", f'[app.schema_registry]\nurl = "{url}"\n\n[pipelines.p]')
    return load_config(write(tmp_path, text), environ={})


@pytest.mark.parametrize("fmt", ["avro", "protobuf", "json_schema"])
async def test_demo_events_in_a_registry_format_decode_to_what_their_json_decodes_to(tmp_path, fmt):
    config = config_with_registry(tmp_path)
    write_value = await demo_writer(config, "payments", fmt)
    events = list(demo_events(50, seed=5))
    wire = [InputRecord("payments", 0, i, 0, e.key, await write_value(e.value)) for i, e in enumerate(events)]
    assert all(r.value[:1] == b"\x00" for r in wire), "the registry's wire format"
    client = registry_client(config.app.schema_registry)
    assert await client.get_subjects() == ["payments-value"], "registered under the topic's value subject"
    transcoder = SchemaTranscoder(fmt, RegistryLookup(client, serialized=fmt == "protobuf"))
    from_wire = decode(await transcoder.transcode(wire), SCHEMA)
    from_json = decode([InputRecord("payments", 0, i, 0, e.key, e.value) for i, e in enumerate(events)], SCHEMA)
    assert not from_wire.rejects and from_wire.ids == from_json.ids
    assert (from_wire.inputs[0] == from_json.inputs[0]).all()


async def test_json_is_written_as_it_is(tmp_path):
    write_value = await demo_writer(load_config(write(tmp_path, GOOD), environ={}), "t", "json")
    assert await write_value(b'{"id": "a"}') == b'{"id": "a"}'
