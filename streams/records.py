"""The records that flow through a pipeline, in and out.

``SourceRecord`` is a protocol that aiokafka's ``ConsumerRecord`` already satisfies,
so records from the broker flow through without being copied; tests build
``InputRecord`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

# The longest record key a key's state is kept under: a key is stored in memory and in every
# changelog record of its state, which must fit the changelog topic's limit.
MAX_KEY_BYTES = 1024


class Partition(NamedTuple):
    """A partition of a topic: where an offset counts. The engine's own type, so its core needs
    no Kafka client; the Kafka adapters convert at their edge."""

    topic: str
    partition: int


class SourceRecord(Protocol):
    """One consumed record and its position in the log."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch (the record's CreateTime or LogAppendTime)."""
        ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]:
        """The record's headers (a trace id, say), carried on to its outputs."""
        ...


@dataclass(frozen=True, slots=True)
class InputRecord:
    """A plain ``SourceRecord`` for tests and for sources other than aiokafka."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class UndecodableRecord:
    """Stands in for a record the consumer could not decode (a damaged or undecompressible batch):
    it keeps the record's position, so it is dead-lettered and committed like any bad event."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    reason: str
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    # The dead letter's kind: a damaged batch, or an event its schema could not decode
    # (``streams.codecs.schema_transcode``: UnknownSchema, NotWireFormat, Truncated, SchemaMismatch).
    error: str = "Undecodable"

    @property
    def message(self) -> str:
        if self.error == "Undecodable":
            return f"the consumer could not decode the record's batch: {self.reason}"
        return self.reason


@dataclass(frozen=True, slots=True)
class TranscodedRecord:
    """A record whose value arrived in a schema's wire format (Avro, JSON Schema) and is given to the
    pipeline as the JSON object it encodes; ``wire_value`` is what the topic held (dead letters copy it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    wire_value: bytes | None = None


class ReadRecord(NamedTuple):
    """A record in a schema's wire format whose event id and model inputs were taken from it as
    read (``streams.codecs.field_picks``): ``event`` holds them, and ``value`` is what the topic
    held. ``reader`` writes the JSON the record would otherwise have had, for an event the decoder
    hands back (``streams.codecs.transcoded.as_json``). A tuple: a fetch makes one per event."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    event: tuple[object, ...]
    reader: object


# Which input headers an output carries: all of them, none, or those whose names are listed.
HeaderPolicy = Literal["all", "none"] | tuple[str, ...]


def header_picker(policy: HeaderPolicy) -> Callable[[SourceRecord], tuple[tuple[str, bytes], ...]]:
    """A function from an input record to the headers its outputs carry, under ``policy``."""
    if policy == "all":
        return lambda record: tuple(record.headers)
    if policy == "none":
        return lambda record: ()
    wanted = frozenset(policy)
    return lambda record: tuple(h for h in record.headers if h[0] in wanted)


class OutputRecord(NamedTuple):
    """A record to produce: a prediction or a dead letter.

    ``partition`` is the partition of the input it answers, which the sink follows so
    per-key order holds without re-hashing keys; None leaves it to the key partitioner.
    A re-keyed event (``streams.kafka.rekey``) goes to ``to_partition`` instead, its new key's
    partition, and keeps its input's ``timestamp`` (None: the time it is produced).
    A named tuple, not a dataclass: one is made per event, and a tuple costs a third as much.
    """

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    to_partition: int | None = None
    timestamp: int | None = None
