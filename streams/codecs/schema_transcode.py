"""Events written with a schema registry (Avro, Protobuf, JSON Schema), given to the pipeline as JSON objects.

Each value names its writer's schema by id (``streams.codecs.wire_format``). The schemas of a
batch are fetched before it is decoded (``SchemaLookup``, the registry's client: ``app.schema_registry``)
and kept; then each value is read by its schema's reader (``streams.codecs.avro_json``: fastavro's
compiled reader; ``streams.codecs.proto_json``: Protobuf's) and written as the JSON object it
encodes, so every later step (the decoding rule, per-key features, dead letters, the backfill) is
the one JSON events take, and an Avro event and its JSON twin score the same. A JSON Schema value
is the JSON after its header. Given the pipeline's ``fields``, an event whose schema guarantees what
that decoding would find has them taken as read instead (``streams.codecs.field_picks``: a
``ReadRecord``), with the same result and without the JSON.

Faults that are the event's are dead letters naming the schema id: ``NotWireFormat`` (no magic
byte), ``UnknownSchema`` (the registry has no such id), ``Truncated``, ``SchemaMismatch`` (bytes
left over, or a value JSON cannot hold). Faults that are not the event's never are: while the
registry cannot be reached the batch waits, retried with back-off (``RegistryUnavailable``).

Hostile Avro schemas are refused before they decode anything (``streams.codecs.avro_safety``),
and a value of any format that could decode to more JSON than the pipeline's ``max_payload_bytes``
is a dead letter (``PayloadTooLarge``) before it is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from streams.codecs.avro_json import AvroReader
from streams.codecs.proto_json import ProtoReader
from streams.codecs.transcoded import as_json, dead, picked
from streams.codecs.wire_format import (
    HEADER_BYTES,
    BadSchema,
    MissingImport,
    NotWireFormat,
    WriterSchema,
    schema_id_of,
)
from streams.errors import RegistryUnavailable
from streams.records import SourceRecord, UndecodableRecord

if TYPE_CHECKING:
    from streams.codecs.codec import EventSchema

log = logging.getLogger(__name__)

FORMATS = ("avro", "protobuf", "json_schema")
SCHEMA_TYPES = {"avro": "AVRO", "protobuf": "PROTOBUF", "json_schema": "JSON"}
# Schemas kept by id (a registry holds a few hundred; an id no registry knows is kept as unknown).
MAX_SCHEMAS = 10_000
# An id the registry did not know is asked again after this long (it may have been registered since).
UNKNOWN_FOR_S = 30.0
# Back-off while the registry cannot be reached: doubling from the first to the last, then steady.
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0
LOG_EVERY_S = 30.0
# Requests to the registry at once, however many new ids a batch names.
MAX_CONCURRENT_LOOKUPS = 16
DEFAULT_MAX_JSON_BYTES = 1 << 20


class SchemaLookup(Protocol):
    async def fetch(self, schema_id: int) -> WriterSchema | None:
        """The schema with id ``schema_id``; None if the registry has none; ``RegistryUnavailable``
        if it cannot say (away, slow, an error of its own)."""
        ...


class RecordReader(Protocol):
    def read(self, value: bytes) -> bytes:
        """The JSON object ``value`` (header included) encodes; ``Unreadable`` saying why not."""
        ...

    def read_event(self, value: bytes) -> tuple[object, ...] | None:
        """The pipeline's fields of ``value`` as read (``streams.codecs.field_picks``), or None."""
        ...


class _JsonSchemaReader:
    def read(self, value: bytes) -> bytes:
        return value[HEADER_BYTES:]  # the JSON itself, which the decoding rule reads like any other

    def read_event(self, value: bytes) -> None:
        return None  # its JSON is decoded as any JSON event's


class _Known(NamedTuple):
    reader: RecordReader | None
    problem: str | None  # why its events are dead letters, if they all are
    ask_again_at: float | None = None  # when a problem that may pass (a missing import) is asked about again


class SchemaTranscoder:
    def __init__(
        self,
        fmt: str,
        lookup: SchemaLookup,
        *,
        pipeline: str = "",
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        fields: EventSchema | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
        self.format = fmt
        self.lookup = lookup
        self.pipeline = pipeline
        # The pipeline's max_payload_bytes: an Avro value that could decode to more is not decoded.
        self.max_json_bytes = max_json_bytes
        # The pipeline's schema: its fields are taken from each record as read where its schema allows.
        self.fields = fields
        self._asking = asyncio.Semaphore(MAX_CONCURRENT_LOOKUPS)
        self._known: OrderedDict[int, _Known] = OrderedDict()
        self._unknown: OrderedDict[int, float] = OrderedDict()
        self._last_log = -LOG_EVERY_S

    async def transcode(self, records: Sequence[SourceRecord]) -> list[SourceRecord]:
        """``records`` as the pipeline reads them; waits while the registry cannot be reached."""
        await self._learn(self._wanted(records))
        return [self._one(record) for record in records]

    def _wanted(self, records: Sequence[SourceRecord]) -> list[int]:
        now = time.monotonic()
        wanted: set[int] = set()
        for record in records:
            value = record.value
            if type(record) is UndecodableRecord or not value or len(value) < HEADER_BYTES or value[0] != 0:
                continue
            schema_id = int.from_bytes(value[1:HEADER_BYTES], "big")
            known = self._known.get(schema_id)
            if known is not None and (known.ask_again_at is None or now < known.ask_again_at):
                continue
            asked = self._unknown.get(schema_id)
            if asked is None or now - asked >= UNKNOWN_FOR_S:
                wanted.add(schema_id)
        return sorted(wanted)

    async def _learn(self, ids: list[int]) -> None:
        """Every id in ``ids`` answered (its schema, or that it has none); an answer that came is kept
        while the others are asked again."""
        pause = RETRY_FIRST_S
        waited_since = None
        while ids:
            answers = await asyncio.gather(*(self._ask(i) for i in ids), return_exceptions=True)
            failed: list[int] = []
            reason: BaseException | None = None
            for schema_id, answer in zip(ids, answers, strict=True):
                if isinstance(answer, RegistryUnavailable):
                    failed.append(schema_id)
                    reason = answer
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    self._keep(schema_id, answer)
            if not failed:
                if waited_since is not None:
                    log.warning("pipeline %s: the schema registry answers again; decoding resumes", self.pipeline)
                return
            ids = failed
            waited_since = waited_since or time.monotonic()
            self._log_now(
                "pipeline %s: the schema registry cannot be reached (%s): the events of schema(s) %s wait "
                "(%.0fs so far), trying again in %.1fs; none is dead-lettered for it",
                self.pipeline,
                reason,
                ", ".join(map(str, ids[:5])) + (" ..." if len(ids) > 5 else ""),
                time.monotonic() - waited_since,
                pause,
            )
            await asyncio.sleep(pause)
            pause = min(RETRY_MAX_S, pause * 2)

    async def _ask(self, schema_id: int) -> WriterSchema | None:
        async with self._asking:  # a flood of ids is not a flood of connections
            return await self.lookup.fetch(schema_id)

    def _keep(self, schema_id: int, schema: WriterSchema | None) -> None:
        if schema is None:
            self._unknown[schema_id] = time.monotonic()
            self._unknown.move_to_end(schema_id)
            while len(self._unknown) > MAX_SCHEMAS:
                self._unknown.popitem(last=False)
            return
        self._unknown.pop(schema_id, None)
        self._known[schema_id] = self._prepared(schema_id, schema)
        while len(self._known) > MAX_SCHEMAS:
            self._known.popitem(last=False)

    def _prepared(self, schema_id: int, schema: WriterSchema) -> _Known:
        expected = SCHEMA_TYPES[self.format]
        if schema.schema_type != expected:
            return _Known(None, f"schema {schema_id} is a {schema.schema_type} schema; this pipeline reads {expected}")
        try:
            if self.format == "avro":
                return _Known(AvroReader(schema_id, schema.text, self.max_json_bytes, self.fields), None)
            if self.format == "protobuf":
                return _Known(ProtoReader(schema_id, schema, self.max_json_bytes, self.fields), None)
        except MissingImport as exc:
            return _Known(None, str(exc), time.monotonic() + UNKNOWN_FOR_S)
        except BadSchema as exc:
            return _Known(None, str(exc))
        return _Known(_JsonSchemaReader(), None)

    def _one(self, record: SourceRecord) -> SourceRecord:
        value = record.value
        if type(record) is UndecodableRecord or not value:
            return record  # the decoder names these (a tombstone, an empty value, a damaged batch)
        try:
            schema_id = schema_id_of(value)
        except NotWireFormat as exc:
            return dead(record, "NotWireFormat", str(exc))
        known = self._known.get(schema_id)
        if known is None:
            return dead(record, "UnknownSchema", f"schema {schema_id} is not in the schema registry")
        if known.reader is None:
            return dead(record, "SchemaMismatch", known.problem or f"schema {schema_id} cannot be read")
        event = known.reader.read_event(value)
        if event is not None:
            return picked(record, event, known.reader)
        return as_json(record, known.reader)

    def _log_now(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(message, *args)
