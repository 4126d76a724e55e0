"""The demo events in a schema registry's formats (``sluice produce --format avro|json_schema``).

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
FORMATS = ("json", "avro", "json_schema")

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
    else:
        from confluent_kafka.schema_registry._async.json_schema import AsyncJSONSerializer

        serializer = await AsyncJSONSerializer(json.dumps(DEMO_JSON_SCHEMA), client)
    context = SerializationContext(topic, MessageField.VALUE)

    async def write(value: bytes) -> bytes:
        return bytes(await serializer(orjson.loads(value), context))

    try:
        await write(_FIRST)  # registers the schema: a registry away or refusing is one line now
    except Exception as exc:  # noqa: BLE001 - the client raises its own kinds, and httpx's
        raise OperatorError(
            f"the schema registry at {registry.url} did not take the demo's {fmt} schema for subject "
            f"{topic}-value: {type(exc).__name__}: {exc}"
        ) from None
    return write


async def _as_is(value: bytes) -> bytes:
    return value


_FIRST = orjson.dumps(
    {"id": "schema-check", "account": "a", "ts": 0, "features": [], "amount": 0.0, "merchant_risk": 0.0, "foreign": 0.0}
)
