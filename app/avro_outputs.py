"""Predictions as Avro (``output_format = "avro"``): the output schema registered with the app's
registry under the output topic's subject, ``<topic>-value`` (TopicNameStrategy, what Confluent's
serializers and deserializers use by default), at the start of a worker or a backfill to Kafka.

The schema is derived from the pipeline (``streams.codecs.avro_outputs.output_schema``); a
registry that refuses it (incompatible with what the subject holds, away, refusing the
credentials) stops the start with one line naming the subject and the registry's reason. The id
it returns goes in every output's header. Registering a schema the subject already holds
answers its id and adds no version, so every worker of a group, and every restart, registers.

``WireValues`` reads values written with a registry back as JSON, for ``sluice watch``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import fastavro

from app.config import Config, PipelineConfig
from app.config.schema_registry import SchemaRegistryConfig
from app.schema_registry import registry_client
from streams.codecs.avro_json import avro_to_json
from streams.codecs.avro_outputs import AvroOutputs, output_schema
from streams.codecs.avro_safety import check_safe
from streams.codecs.wire_format import HEADER_BYTES, MAGIC
from streams.errors import ConfigError

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient


def subject_of(topic: str) -> str:
    """The subject a topic's values are registered under (TopicNameStrategy)."""
    return f"{topic}-value"


def schema_of(p: PipelineConfig, *, emit_features: bool) -> dict[str, Any]:
    """The schema of pipeline ``p``'s outputs; with ``emit_features``, with its per-key features."""
    features = [(f.name, f.shape) for f in p.state.features] if emit_features and p.state is not None else []
    try:
        return output_schema(p.name, features)
    except ValueError as exc:
        raise ConfigError(f'pipeline {p.name}: output_format = "avro" with its features emitted: {exc}') from None


async def register_outputs(config: Config, p: PipelineConfig, topic: str, *, emit_features: bool) -> AvroOutputs | None:
    """What writes pipeline ``p``'s outputs to ``topic`` as Avro, its schema registered under the
    topic's subject; None for a pipeline that writes JSON. ``ConfigError`` (one line) when the
    registry does not take the schema."""
    if p.output_format == "json":
        return None
    registry = config.app.schema_registry
    if registry is None:  # the config's loader refuses this; a config built in code may not
        raise ConfigError(
            f'{config.path}: pipeline {p.name}: output_format = "avro" needs an [app.schema_registry] table'
        )
    schema = schema_of(p, emit_features=emit_features)
    client = registry_client(registry)
    from confluent_kafka.schema_registry import Schema, SchemaRegistryError

    subject = subject_of(topic)
    try:
        schema_id = await client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    except SchemaRegistryError as exc:
        reason = f"it answered {exc.http_status_code}: {exc.error_message}"
        raise ConfigError(_refused(config, p, subject, reason)) from None
    except Exception as exc:  # noqa: BLE001 - connection refused, a timeout, TLS: one line, not a traceback
        raise ConfigError(_refused(config, p, subject, f"{type(exc).__name__}: {exc}")) from None
    finally:
        if not registry.in_memory:
            await client.__aexit__(None, None, None)  # its HTTP connections (the in-memory one is shared)
    return AvroOutputs(schema, schema_id)


def _refused(config: Config, p: PipelineConfig, subject: str, reason: str) -> str:
    assert config.app.schema_registry is not None
    reason = " ".join(reason.split())[:500]
    return (
        f"{config.path}: pipeline {p.name}: the schema registry {config.app.schema_registry.url} did not register "
        f"the outputs' schema under subject '{subject}' (output_format = \"avro\"): {reason}"
    )


# A JSON Schema's values are the JSON after the header.
JSON_SCHEMA = object()


class WireValues:
    """Values as JSON: those in the registry's wire format (Avro outputs, JSON Schema) read by the
    schema their header names, fetched once per id from ``registry``; any other value as it is."""

    def __init__(self, registry: SchemaRegistryConfig | None) -> None:
        self.registry = registry
        self._client: AsyncSchemaRegistryClient | None = None
        # By schema id: the parsed Avro schema, JSON_SCHEMA, or why its values cannot be read (a str).
        self._schemas: dict[int, Any] = {}

    async def as_json(self, value: bytes | None) -> tuple[bytes | None, str | None]:
        """``(value as JSON, None)``, or ``(None, why it cannot be read)`` for a wire-format value."""
        if value is None or len(value) < HEADER_BYTES or value[0] != MAGIC:
            return value, None
        schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
        schema = self._schemas.get(schema_id)
        if schema is None:
            schema, kept = await self._schema(schema_id)
            if kept:  # a registry that did not answer is asked again at the next value
                self._schemas[schema_id] = schema
        if schema is JSON_SCHEMA:
            return value[HEADER_BYTES:], None
        if isinstance(schema, str):
            return None, schema
        try:
            return avro_to_json(value, schema), None
        except Exception as exc:  # noqa: BLE001 - whatever a topic holds is one line, never a traceback
            return None, f"schema {schema_id} cannot read the value: {type(exc).__name__}: {exc}"[:300]

    async def _schema(self, schema_id: int) -> tuple[Any, bool]:
        """The schema (or why its values cannot be read), and whether that answer is kept."""
        if self.registry is None:
            return (
                f"written with schema {schema_id} of a registry: add [app.schema_registry] to the config to read it",
                True,
            )
        if self._client is None:
            self._client = registry_client(self.registry)
        try:
            schema = await self._client.get_schema(schema_id)
        except Exception as exc:  # noqa: BLE001 - an unknown id, a registry away: said, not raised
            reason = " ".join(str(exc).split())[:300]
            return f"schema {schema_id}: the registry {self.registry.url} did not answer it: {reason}", False
        if schema.schema_type == "JSON":
            return JSON_SCHEMA, True
        if schema.schema_type not in (None, "AVRO") or not schema.schema_str:
            return f"schema {schema_id} is {schema.schema_type}, which sluice watch does not read", True
        try:
            parsed = fastavro.parse_schema(json.loads(schema.schema_str))
            check_safe(parsed)  # recursive schemas, items of no bytes: refused before any value is read
        except Exception as exc:  # noqa: BLE001
            return f"schema {schema_id} is not one sluice reads: {exc}"[:300], True
        return parsed, True

    async def close(self) -> None:
        if self._client is not None and self.registry is not None and not self.registry.in_memory:
            await self._client.__aexit__(None, None, None)
