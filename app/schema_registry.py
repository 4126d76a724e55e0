"""The schema registry's client: confluent-kafka's async client, for the registry of ``[app.schema_registry]``.

The client speaks the Confluent Schema Registry REST API, which Confluent's registry, Karapace,
Redpanda's built-in registry and Apicurio Registry's compatible API (``/apis/ccompat/v7``) serve.
``mock://NAME`` is the client's own in-memory registry: one per name in this process, so a test
that writes events with the client's serializers and the pipeline it runs here share it.

A worker or backfill reading a ``format`` other than ``"json"`` gets a ``TranscodingSource``
around its source (``transcoding``): every batch's schemas are fetched by id, kept, and the
events decoded before the batcher sees them.
"""

from __future__ import annotations

import base64
import os
import warnings
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from app.config import Config, PipelineConfig
from app.config.schema_registry import SchemaRegistryConfig
from streams.codecs.proto_schema import MAX_FILES, WELL_KNOWN_NAMES
from streams.codecs.schema_transcode import SchemaTranscoder, WriterSchema
from streams.codecs.transcoding_source import TranscodingSource
from streams.errors import ConfigError, RegistryUnavailable
from streams.source import Source

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

# The registry's error codes for "schema not found": the API's 40403 (Confluent, Karapace), and the
# 40400 confluent-kafka's in-memory registry answers. Only these 404s are the event's fault.
SCHEMA_NOT_FOUND = (40403, 40400)
# ... and for an imported file's subject or version: 40401, 40402.
IMPORT_NOT_FOUND = (40401, 40402, *SCHEMA_NOT_FOUND)
# The in-memory registries of this process, by URL (each ``mock://`` client would otherwise be empty).
_IN_MEMORY: dict[str, AsyncSchemaRegistryClient] = {}
T = TypeVar("T")


def registry_client(registry: SchemaRegistryConfig) -> AsyncSchemaRegistryClient:
    """A client for ``registry``; secrets are read from the environment variables it names now."""
    # Imported here: only pipelines with a schema pay for the client's imports at start. Authlib
    # warns about its own httpx module on import (with a filter of its own that shows it always),
    # which is no concern of a sluice user's: recorded here, and dropped.
    with warnings.catch_warnings(record=True):
        from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

    if registry.in_memory:
        if registry.url not in _IN_MEMORY:
            _IN_MEMORY[registry.url] = AsyncSchemaRegistryClient.new_client({"url": registry.url})
        return _IN_MEMORY[registry.url]
    # One try per request: sluice retries a registry that is away itself, with back-off, and says so.
    conf: dict[str, Any] = {"url": registry.url, "timeout": registry.timeout_ms / 1000, "max.retries": 0}
    if registry.username_env is not None and registry.password_env is not None:
        conf["basic.auth.user.info"] = f"{_secret(registry.username_env)}:{_secret(registry.password_env)}"
    if registry.token_env is not None:
        token_env = registry.token_env
        _secret(token_env)  # named now: a missing variable fails at start, not at the first event
        conf["bearer.auth.credentials.source"] = "CUSTOM"
        conf["bearer.auth.custom.provider.function"] = lambda _config: {
            "bearer.auth.token": _secret(token_env),
            "bearer.auth.logical.cluster": "",
            "bearer.auth.identity.pool.id": "",
        }
        conf["bearer.auth.custom.provider.config"] = {}
    if registry.ca_file is not None:
        conf["ssl.ca.location"] = str(registry.ca_file)
    if registry.cert_file is not None and registry.key_file is not None:
        conf["ssl.certificate.location"] = str(registry.cert_file)
        conf["ssl.key.location"] = str(registry.key_file)
    return AsyncSchemaRegistryClient(conf)


def _secret(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"[app.schema_registry] names the environment variable {name}, which is not set")
    return value


class RegistryLookup:
    """``streams.codecs.schema_transcode.SchemaLookup`` over the client: a 404 is an unknown id
    (the event's fault); anything else, the registry's (``RegistryUnavailable``).

    With ``serialized`` (Protobuf), schemas are asked for in their serialized form (a base64
    ``FileDescriptorProto``, the registry's ``format=serialized``), with the files they import."""

    def __init__(self, client: AsyncSchemaRegistryClient, *, serialized: bool = False) -> None:
        self.client = client
        self.fmt = "serialized" if serialized else None

    async def fetch(self, schema_id: int) -> WriterSchema | None:
        schema = await self._asking(f"schema {schema_id}", self.client.get_schema(schema_id, fmt=self.fmt))
        if schema is None:
            return None
        schema_type = schema.schema_type or "AVRO"
        text = schema.schema_str or ""  # never empty: ``_asking`` counts an empty answer as the registry's fault
        references: tuple[tuple[str, str | None], ...] = ()
        if schema_type == "PROTOBUF" and self.fmt == "serialized":
            _check_serialized(schema_id, text)
            references = await self._imports(schema, {})
        return WriterSchema(schema_type, text, references)

    async def _imports(self, schema: Any, found: dict[str, str | None]) -> tuple[tuple[str, str | None], ...]:
        """The files ``schema`` imports, each after the files it imports itself (at most a bound
        more than ``MAX_FILES``, which the reader refuses)."""
        for ref in schema.references or ():
            if ref.name in found or ref.name in WELL_KNOWN_NAMES or len(found) > MAX_FILES:
                continue
            found[ref.name] = None  # a cycle of imports ends here
            asked = self.client.get_version(ref.subject, ref.version, True, self.fmt)
            registered = await self._asking(f"{ref.subject} version {ref.version}", asked, IMPORT_NOT_FOUND)
            if registered is not None:
                await self._imports(registered.schema, found)
                found.pop(ref.name)  # after its own imports
                found[ref.name] = registered.schema.schema_str
        return tuple(found.items())

    async def _asking(
        self, what: str, request: Awaitable[T], not_found: tuple[int, ...] = SCHEMA_NOT_FOUND
    ) -> T | None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            answer = await request
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and exc.error_code in not_found:
                return None
            # Any other 404 (a proxy's page, a wrong path in the URL) says nothing of the id.
            raise RegistryUnavailable(f"the registry answered {exc.http_status_code}: {exc.error_message}") from exc
        except Exception as exc:  # a connection refused, a timeout, a TLS failure: the registry's
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        text = getattr(answer, "schema_str", None) or getattr(getattr(answer, "schema", None), "schema_str", None)
        if not text:
            # An answer without a schema is the registry's fault (or a proxy's): asked again, never kept.
            raise RegistryUnavailable(f"the registry's answer for {what} holds no schema")
        return answer


def _check_serialized(schema_id: int, text: str) -> None:
    """A registry that answers ``.proto`` source for ``format=serialized`` cannot serve Protobuf
    to sluice; that is the registry's fault, not the events': they wait, and the log says why."""
    try:
        base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeError):
        raise RegistryUnavailable(
            f"the registry answered schema {schema_id} as .proto source, not in the serialized form sluice asks "
            "for (format=serialized, which Confluent's registry and Karapace serve)"
        ) from None


def transcoding(config: Config, p: PipelineConfig, source: Source, *, picks: bool = True) -> Source:
    """``source`` as pipeline ``p`` reads it: decoded by schema unless its format is JSON. With
    ``picks``, the pipeline's fields are taken from records as read where their schema allows
    (``streams.codecs.field_picks``): for a reader of those fields alone (the pipeline's decoder);
    a reader of other fields (the re-keying stage's key) gets every record as JSON."""
    if p.format == "json":
        return source
    registry = config.app.schema_registry
    if registry is None:  # the config's loader refuses this; a config built in code may not
        raise ConfigError(f'pipeline {p.name}: format = "{p.format}" needs an [app.schema_registry] table')
    lookup = RegistryLookup(registry_client(registry), serialized=p.format == "protobuf")
    transcoder = SchemaTranscoder(
        p.format, lookup, pipeline=p.name, max_json_bytes=p.schema.max_payload_bytes, fields=p.schema if picks else None
    )
    return TranscodingSource(source, transcoder)


def refuse_in_memory(config: Config, command: str, fmt: str | None = None) -> None:
    """A command that runs as a process of its own cannot share an in-memory registry with the
    producers (or consumers): every event would be a dead letter for an unknown schema. Say so at
    start. ``fmt``: the format the command writes (else: any pipeline reading a schema's format)."""
    registry = config.app.schema_registry
    uses = fmt is not None or any(p.format != "json" for p in config.pipelines)
    if registry is not None and registry.in_memory and uses:
        raise ConfigError(
            f"{config.path}: key 'app.schema_registry.url' is {registry.url!r}, an in-memory registry that only "
            f"code in one process shares (tests); sluice {command} needs a registry server's http(s):// address"
        )
