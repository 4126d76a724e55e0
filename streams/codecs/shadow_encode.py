"""A shadow's predictions as JSON records for the shadow topic, a batch at a time.

Each record is keyed like the served output for the same event (the record key, or its source
position) and says which shadow made it and what the served model said about the same event::

    {"id": "tx-1", "prediction": 0.91, "model": "transformer", "model_version": "2", "shadow": true,
     "served": {"model": "mlp", "model_version": "1", "prediction": 0.12},
     "source": {"topic": "transactions", "partition": 0, "offset": 42}, "event_ts": 1733539200000}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from streams.codecs.encode import json_each, position_key
from streams.records import OutputRecord, SourceRecord


def _first_column(values: np.ndarray) -> list[Any]:
    rows = values.reshape(len(values), -1)
    return rows[:, 0].tolist() if rows.shape[1] == 1 else rows.tolist()


def encode_shadow(
    records: Sequence[SourceRecord],
    rows: np.ndarray,
    ids: Sequence[Any],
    predictions: np.ndarray,
    served: np.ndarray,
    *,
    topic: str,
    name: str,
    version: str,
    served_name: str,
    served_version: str,
    key_by_position: bool = False,
) -> list[OutputRecord]:
    """One record per event of ``rows`` (batch indices into ``records``), in order."""
    if not len(rows):
        return []  # (numpy cannot reshape no predictions into rows of unknown width)
    dumps = orjson.dumps
    # Constant parts serialised once (names escaped by orjson), '%' doubled for the template.
    model = (dumps(name) + b',"model_version":' + dumps(version)).replace(b"%", b"%%")
    by = (dumps(served_name) + b',"model_version":' + dumps(served_version)).replace(b"%", b"%%")
    template = (
        b'{"id":%b,"prediction":%b,"model":' + model + b',"shadow":true,"served":{"model":' + by + b',"prediction":%b},'
        b'"source":{"topic":%b,"partition":%d,"offset":%d},"event_ts":%d}'
    )
    id_json = [dumps(i) for i in ids] if not ids or not isinstance(ids[0], str) else _quoted(ids)
    mine, _ = json_each(_first_column(np.asarray(predictions)))
    theirs, _ = json_each(_first_column(np.asarray(served)))
    topics: dict[str, bytes] = {}
    out: list[OutputRecord] = []
    for row, event_id, p, s in zip(rows.tolist(), id_json, mine, theirs, strict=True):
        record = records[row]
        source = topics.get(record.topic) or topics.setdefault(record.topic, dumps(record.topic))
        body = template % (event_id, p, s, source, record.partition, record.offset, record.timestamp)
        key = position_key(record) if key_by_position else record.key
        out.append(OutputRecord(topic, key, body))
    return out


def _quoted(ids: Sequence[Any]) -> list[bytes]:
    values, quoted = json_each(list(ids))
    return [b'"' + v + b'"' for v in values] if quoted else values
