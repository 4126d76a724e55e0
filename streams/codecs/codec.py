"""JSON events in, tensors out; predictions in, JSON records out (``streams.codecs.encode``, whose
functions are imported from here too). Whole batches at a time.

Decoding has a fast path and a careful path. The fast path (``streams.codecs.fast_decode``) reads
each value with a msgspec decoder generated from the schema, which builds only the id and
the input fields (every other field is skipped) and flattens the numbers into one array
per input. It vouches only for events the careful path would score, with the same id and
tensors bit for bit; every other event of the batch (not JSON, a missing field, a ragged
feature vector, anything where msgspec and orjson could disagree) is handed to the careful
path (``streams.codecs.careful_decode``), which checks it alone with orjson and names what is
wrong with it. So the valid records of a batch are still scored, each bad one gets its own
reason, and the careful path is the reference for both.

Both paths apply one rule, so whether an event is scored never depends on its neighbours
(live and backfill batch the same events differently): a feature is a JSON number, or
``true``/``false`` read as 1/0, converted as a double and then to float32. Strings (even
numeric ones), nulls and objects are ``WrongType``.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from streams.codecs.careful_decode import decode_each
from streams.codecs.encode import encode_predictions, position_key
from streams.codecs.fast_decode import FastDecoder, overlapping
from streams.codecs.read_columns import decode_read
from streams.records import ReadRecord, SourceRecord, UndecodableRecord

if TYPE_CHECKING:
    from streams.features.step import StateUpdate

__all__ = [
    "MAX_DECODE_BYTES",
    "Decoded",
    "EventSchema",
    "Reject",
    "TensorField",
    "decode",
    "encode_predictions",
    "fast_decoder",
    "position_key",
]


@dataclass(frozen=True)
class TensorField:
    """One model input: the event field it is read from and its shape per event.

    ``field`` names it (in errors and to the model's other parts); ``path``, when set, is where
    it is in the event: the keys of the objects it is nested in, then its own (``field`` is
    then the keys joined by dots)."""

    field: str
    shape: tuple[int, ...]
    path: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return self.path or (self.field,)


@dataclass(frozen=True)
class EventSchema:
    """How an event's JSON maps to the model's input tensors."""

    id_field: str
    inputs: tuple[TensorField, ...]
    max_payload_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class Reject:
    """Why the record at ``index`` of its batch cannot be scored."""

    index: int
    error: str
    message: str


@dataclass
class Decoded:
    """The scorable part of a batch.

    ``rows[i]`` is the index in the batch of the record whose id is ``ids[i]`` and whose
    tensors are row ``i`` of each input.
    """

    rows: np.ndarray
    ids: list[Any]
    inputs: list[np.ndarray]
    rejects: list[Reject] = field(default_factory=list)
    # Per-key features by name, row for row (stateful pipelines), for outputs that carry them,
    # and the keys' new state, written once the batch is scored (``streams.features.step``).
    features: dict[str, np.ndarray] | None = None
    state_update: StateUpdate | None = None
    # Row i's event in ``state_update``'s per-event arrays.
    state_rows: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def narrowed(self, keep: np.ndarray, rejects: Sequence[Reject] = ()) -> Decoded:
        """Only the rows ``keep`` selects (a boolean mask or indices), with ``rejects`` added in batch
        order: every row-wise field narrowed alike, so none is forgotten by a caller."""
        ids = [self.ids[i] for i in np.arange(len(self))[keep].tolist()]
        return Decoded(
            rows=self.rows[keep],
            ids=ids,
            inputs=[x[keep] for x in self.inputs],
            rejects=sorted([*self.rejects, *rejects], key=lambda r: r.index),
            features=None if self.features is None else {k: v[keep] for k, v in self.features.items()},
            state_update=self.state_update,
            state_rows=None if self.state_rows is None else self.state_rows[keep],
        )


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Decoding allocates many short-lived lists and floats; letting the cyclic GC scan
    # them mid-batch costs more than the parse itself. None of them form cycles.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# The most value bytes parsed at once. Parsed JSON can take far more memory than its text
# (nested empty arrays cost ~30x), so a batch of maximum-size events is decoded in slices.
MAX_DECODE_BYTES = 8 << 20


def decode(records: Sequence[SourceRecord], schema: EventSchema, skip: Sequence[int] = ()) -> Decoded:
    """Turn a batch of records into input tensors, setting aside the ones that can't be scored.

    The records at batch indices ``skip`` are not decoded, and not rejected either: the caller
    decided their fate (late events, which ``streams.flow.pipeline.expire`` dead-letters).
    """
    if len(skip):
        gone = set(skip)
        kept = [i for i in range(len(records)) if i not in gone]
        inner = decode([records[i] for i in kept], schema)
        return Decoded(
            rows=np.asarray(kept, dtype=np.int64)[inner.rows],
            ids=inner.ids,
            inputs=inner.inputs,
            rejects=[Reject(kept[r.index], r.error, r.message) for r in inner.rejects],
        )
    slices = _byte_bounded_slices(records)
    if len(slices) > 1:
        return _concatenate([(start, decode(records[start:stop], schema)) for start, stop in slices], schema)
    with _gc_paused():
        if ReadRecord in set(map(type, records)):  # events of a schema, their fields already taken
            return decode_read(records, schema, _decode_fast)
        return _decode_fast(records, schema)


def _byte_bounded_slices(records: Sequence[SourceRecord]) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` slices whose values add up to at most ``MAX_DECODE_BYTES``
    (a slice holds at least one record)."""
    slices: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, record in enumerate(records):
        length = len(record.value) if record.value is not None else 0
        if size + length > MAX_DECODE_BYTES and i > start:
            slices.append((start, i))
            start, size = i, 0
        size += length
    slices.append((start, len(records)))
    return slices


def _concatenate(parts: list[tuple[int, Decoded]], schema: EventSchema) -> Decoded:
    """One ``Decoded`` from the decoded slices of a batch (each with the index it starts at)."""
    rows = [part.rows + start for start, part in parts]
    inputs = [
        np.concatenate([part.inputs[i] for _, part in parts]) if parts else np.empty((0, *spec.shape), dtype=np.float32)
        for i, spec in enumerate(schema.inputs)
    ]
    return Decoded(
        rows=np.concatenate(rows) if rows else np.empty(0, dtype=np.int64),
        ids=[event_id for _, part in parts for event_id in part.ids],
        inputs=inputs,
        rejects=[Reject(r.index + start, r.error, r.message) for start, part in parts for r in part.rejects],
    )


@functools.lru_cache(maxsize=64)
def fast_decoder(schema: EventSchema) -> FastDecoder | None:
    """The msgspec decoder of ``schema``'s fields, or None where one struct cannot hold them
    (an input read from the id field, or one field read twice): the careful path decodes those."""
    paths = [(schema.id_field,), *(spec.keys for spec in schema.inputs)]
    if overlapping(paths):
        return None
    try:
        return FastDecoder(schema.id_field, [(spec.keys, spec.shape) for spec in schema.inputs])
    except ValueError:  # msgspec cannot name a field so (a key with '"' or '\\'): the careful path reads it
        return None


def _decode_fast(records: Sequence[SourceRecord], schema: EventSchema) -> Decoded:
    fast = fast_decoder(schema)
    if fast is None:
        return _decode_careful(records, schema)
    tried, values = _tried(records, schema.max_payload_bytes)
    positions, ids, inputs = fast.decode(values)
    rows = [tried[p] for p in positions]
    if len(rows) == len(records):
        return Decoded(rows=np.arange(len(rows)), ids=ids, inputs=inputs)
    # The events the fast path did not vouch for, decided one by one by the careful path.
    scored = set(rows)
    rest = [i for i in range(len(records)) if i not in scored]
    careful = _decode_careful([records[i] for i in rest], schema)
    return merged(Decoded(np.asarray(rows, dtype=np.int64), ids, inputs), rest, careful)


def merged(first: Decoded, rest: Sequence[int], others: Decoded) -> Decoded:
    """``first`` (whose rows are batch indices) and ``others``, decoded from the batch's records at
    ``rest`` (its rows and rejects index those), as one ``Decoded`` in batch order."""
    rows = np.concatenate([first.rows, np.asarray(rest, dtype=np.int64)[others.rows]])
    order = np.argsort(rows, kind="stable")
    both_ids = first.ids + others.ids
    return Decoded(
        rows=rows[order],
        ids=[both_ids[i] for i in order.tolist()],
        inputs=[np.concatenate([a, b])[order] for a, b in zip(first.inputs, others.inputs, strict=True)],
        rejects=[Reject(rest[r.index], r.error, r.message) for r in others.rejects],
    )


def _tried(records: Sequence[SourceRecord], limit: int) -> tuple[list[int], list[bytes]]:
    """The indices and values of the records the fast path may try: a value that is present,
    not empty and within the size limit (the careful path names the others' faults)."""
    values = [None if type(r) is UndecodableRecord else r.value for r in records]
    lengths = [0 if v is None else len(v) for v in values]
    if min(lengths, default=0) > 0 and max(lengths) <= limit:
        return list(range(len(values))), cast(list[bytes], values)
    tried = [i for i, length in enumerate(lengths) if 0 < length <= limit]
    return tried, [cast(bytes, values[i]) for i in tried]


def _decode_careful(records: Sequence[SourceRecord], schema: EventSchema) -> Decoded:
    rows, ids, inputs, rejects = decode_each(records, schema)
    return Decoded(rows=np.asarray(rows, dtype=np.int64), ids=ids, inputs=inputs, rejects=[Reject(*r) for r in rejects])
