"""A batch's events whose fields were taken as read (``ReadRecord``) turned into the model's columns.

Their ids and numbers are already Python values (``streams.codecs.field_picks``): each input is
one ``np.fromiter`` over the batch, through a double to float32 as the decoding rule says. An
event with a value that is not finite after that is handed back as the JSON path would have had
it (``streams.codecs.transcoded.unpicked``), and decoded there with the rest of the batch, which names its fault;
the two parts are merged in batch order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING

import numpy as np

from streams.codecs.transcoded import unpicked
from streams.records import ReadRecord, SourceRecord

if TYPE_CHECKING:
    from streams.codecs.codec import Decoded, EventSchema

Decode = Callable[[Sequence[SourceRecord], "EventSchema"], "Decoded"]


def decode_read(records: Sequence[SourceRecord], schema: EventSchema, decode_rest: Decode) -> Decoded:
    """``records`` decoded: the ``ReadRecord`` ones from their events, the others by ``decode_rest``."""
    from streams.codecs.codec import Decoded, merged  # the codec imports this module

    read = [i for i, r in enumerate(records) if type(r) is ReadRecord]
    readers = {id(r): r for r in (records[i].reader for i in read)}  # type: ignore[attr-defined]
    if any(getattr(reader, "fields", None) != schema for reader in readers.values()):
        # Picked for another schema's fields (a caller decoding the records twice): not these.
        return decode_rest([unpicked(r) for r in records], schema)
    events = [records[i].event for i in read]  # type: ignore[attr-defined]
    n = len(events)
    inputs, good = [], np.ones(n, dtype=bool)
    for k, spec in enumerate(schema.inputs, start=1):
        size = math.prod(spec.shape)
        items = map(itemgetter(k), events)
        with np.errstate(over="ignore"):
            flat = np.fromiter(chain.from_iterable(items) if spec.shape else items, np.float64, n * size)
            flat = flat.astype(np.float32)
        good &= np.isfinite(flat.reshape(n, size)).all(axis=1)
        inputs.append(flat.reshape(n, *spec.shape))
    vouched = np.asarray(read, dtype=np.int64)[good]
    ids = [events[i][0] for i in np.flatnonzero(good).tolist()]
    inputs = [x[good] for x in inputs]
    rest = sorted(set(range(len(records))) - set(vouched.tolist()))
    if not rest:
        return Decoded(rows=vouched, ids=ids, inputs=inputs)
    others = decode_rest([unpicked(records[i]) for i in rest], schema)
    return merged(Decoded(vouched, ids, inputs), rest, others)
