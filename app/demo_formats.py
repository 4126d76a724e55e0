"""The demo events in a schema registry's formats (``sluice produce --format avro|protobuf|json_schema``).

The demo's schema is registered under the topic's value subject (``<topic>-value``, the
TopicNameStrategy every Confluent-compatible client uses by default) and each event written with
confluent-kafka's own serializer, as a producer of a real Kafka shop writes them: a pipeline with
the same ``format`` reads them back as the JSON events they are.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from app.config import Config
from app.schema_registry import registry_client
from streams.errors import ConfigError, OperatorError

# Every field of a demo event (app.demo_events), in Avro.
DEMO_AVRO = {
    "type": "record",
    "name": "Transaction",
    "namespace": "sluice.demo",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "account", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "features", "type": {"type": "array", "items": "double"}},
        {"name": "amount", "type": "double"},
        {"name": "merchant_risk", "type": "double"},
        {"name": "foreign", "type": "double"},
    ],
}
DEMO_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Transaction",
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "account": {"type": "string"},
        "ts": {"type": "integer"},
        "features": {"type": "array", "items": {"type": "number"}},
        "amount": {"type": "number"},
        "merchant_risk": {"type": "number"},
        "foreign": {"type": "number"},
    },
    "required": ["id", "features"],
}
FORMATS = ("json", "avro", "protobuf", "json_schema")
# The same fields in Protobuf, as this .proto file declares them (built here, as protoc would):
#   syntax = "proto3"; package sluice.demo;
#   message Transaction { string id = 1; string account = 2; int64 ts = 3; repeated double features = 4;
#                         double amount = 5; double merchant_risk = 6; double foreign = 7; }
DEMO_PROTO_FIELDS = (
    ("id", "TYPE_STRING"), ("account", "TYPE_STRING"), ("ts", "TYPE_INT64"), ("features", "TYPE_DOUBLE"),
    ("amount", "TYPE_DOUBLE"), ("merchant_risk", "TYPE_DOUBLE"), ("foreign", "TYPE_DOUBLE"),
)  # fmt: skip

Writer = Callable[[bytes], Awaitable[bytes]]


async def demo_writer(config: Config, topic: str, fmt: str) -> Writer:
    """Turns a demo event's JSON value into ``fmt``'s bytes; the schema is registered first, so a
    registry that cannot be reached or refuses the schema is an ``OperatorError`` before any event."""
    if fmt == "json":
        return _as_is
    registry = config.app.schema_registry
    if registry is None:
        raise ConfigError(f"{config.path}: --format {fmt} needs an [app.schema_registry] table with its url")
    from confluent_kafka.serialization import MessageField, SerializationContext

    client = registry_client(registry)
    serializer: Any
    if fmt == "avro":
        from confluent_kafka.schema_registry._async.avro import AsyncAvroSerializer

        serializer = await AsyncAvroSerializer(client, schema_str=json.dumps(DEMO_AVRO))
    elif fmt == "protobuf":
        from confluent_kafka.schema_registry._async.protobuf import AsyncProtobufSerializer

        message = demo_proto_message()
        protobuf = await AsyncProtobufSerializer(message, client, {"use.deprecated.format": False})
        context = SerializationContext(topic, MessageField.VALUE)

        async def write_proto(value: bytes) -> bytes:
            return bytes(await protobuf(message(**orjson.loads(value)), context))

        return await _registered(write_proto, registry.url, fmt, topic)
    else:
        from confluent_kafka.schema_registry._async.json_schema import AsyncJSONSerializer

        serializer = await AsyncJSONSerializer(json.dumps(DEMO_JSON_SCHEMA), client)
    context = SerializationContext(topic, MessageField.VALUE)

    async def write(value: bytes) -> bytes:
        return bytes(await serializer(orjson.loads(value), context))

    return await _registered(write, registry.url, fmt, topic)


async def _registered(write: Writer, url: str, fmt: str, topic: str) -> Writer:
    try:
        await write(_FIRST)  # registers the schema: a registry away or refusing is one line now
    except Exception as exc:  # noqa: BLE001 - the client raises its own kinds, and httpx's
        raise OperatorError(
            f"the schema registry at {url} did not take the demo's {fmt} schema for subject "
            f"{topic}-value: {type(exc).__name__}: {exc}"
        ) from None
    return write


def demo_proto_message() -> type[Message]:
    """The demo's Protobuf message class, built from its descriptor as generated code would be."""
    file = descriptor_pb2.FileDescriptorProto(name="sluice/demo/transaction.proto", package="sluice.demo")
    file.syntax = "proto3"
    message = file.message_type.add(name="Transaction")
    field = descriptor_pb2.FieldDescriptorProto
    for number, (name, kind) in enumerate(DEMO_PROTO_FIELDS, start=1):
        label = field.LABEL_REPEATED if name == "features" else field.LABEL_OPTIONAL
        message.field.add(name=name, number=number, type=getattr(field, kind), label=label)
    pool = DescriptorPool()
    pool.Add(file)
    return GetMessageClass(pool.FindMessageTypeByName("sluice.demo.Transaction"))


async def _as_is(value: bytes) -> bytes:
    return value


_FIRST = orjson.dumps(
    {"id": "schema-check", "account": "a", "ts": 0, "features": [], "amount": 0.0, "merchant_risk": 0.0, "foreign": 0.0}
)
