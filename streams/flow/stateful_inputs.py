"""The model's inputs of a stateful pipeline: event fields and per-key features, in the order of
``forward``'s arguments, from a decoded batch.

What is decoded from each event (``decoded_fields``) is the model's event inputs plus the
numbers the state keeps (one per field, shared with a model input of the same field and
shape ()). ``StatefulInputs.apply`` takes the decoded batch, runs the features step over its
valid events (keyed by the record key, timed by the record timestamp) and assembles the model's
inputs; events without a key cannot have per-key features and become dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streams.codecs.codec import Decoded, Reject, TensorField
from streams.features.step import FeatureStep
from streams.records import MAX_KEY_BYTES, Partition, SourceRecord


@dataclass(frozen=True)
class ModelInput:
    """One argument of the model: an event field (decoded) or a per-key feature (computed)."""

    name: str
    shape: tuple[int, ...]
    from_state: bool = False
    # An event field nested in objects: its keys, outermost first (``name`` is them joined by dots).
    path: tuple[str, ...] = ()


def decoded_fields(inputs: Sequence[ModelInput], state_fields: Sequence[str]) -> tuple[TensorField, ...]:
    """What to decode from each event: the model's event inputs, then each state field not among them."""
    fields = [TensorField(i.name, i.shape, i.path) for i in inputs if not i.from_state]
    known = {f.field for f in fields}
    return tuple(fields + [TensorField(name, ()) for name in state_fields if name not in known])


class StatefulInputs:
    def __init__(self, step: FeatureStep, inputs: Sequence[ModelInput], fields: Sequence[TensorField]) -> None:
        self.step = step
        self.inputs = tuple(inputs)
        index = {f.field: i for i, f in enumerate(fields)}
        self._state_columns = [index[name] for name in step.spec.fields]
        self._sources = [(i.from_state, i.name if i.from_state else index[i.name]) for i in inputs]

    def apply(self, records: Sequence[SourceRecord], decoded: Decoded) -> Decoded:
        """The model's inputs for ``decoded``'s events, with their keys' new state (``state_update``,
        written by ``commit`` once the batch is scored)."""
        keyless = [i for i, row in enumerate(decoded.rows.tolist()) if records[row].key is None]
        if keyless:
            decoded = _without(decoded, keyless, "MissingKey", "the record has no key, which per-key features need")
        too_long = [i for i, row in enumerate(decoded.rows.tolist()) if len(records[row].key or b"") > MAX_KEY_BYTES]
        if too_long:
            message = f"the record's key is over {MAX_KEY_BYTES} bytes, the most a per-key state key may be"
            decoded = _without(decoded, too_long, "KeyTooLong", message)
        rows = decoded.rows.tolist()
        events = [records[row] for row in rows]
        n = len(events)
        columns = [decoded.inputs[c] for c in self._state_columns]
        values = np.stack(columns, axis=1) if columns else np.zeros((n, 0), dtype=np.float32)
        features, update = self.step.compute(
            [Partition(r.topic, r.partition) for r in events],
            [r.key for r in events],
            np.fromiter((r.timestamp for r in events), dtype=np.int64, count=n),
            values,
            np.fromiter((r.offset for r in events), dtype=np.int64, count=n),
        )
        return Decoded(
            rows=decoded.rows,
            ids=decoded.ids,
            inputs=[features[key] if from_state else decoded.inputs[key] for from_state, key in self._sources],  # type: ignore[index]
            rejects=decoded.rejects,
            features=features,
            state_update=update,
            state_rows=np.arange(n),
        )

    def release(self, partitions: set[Partition]) -> None:
        """Let go of the state of partitions this worker no longer owns (closes their databases)."""
        self.step.drop_partitions(sorted(partitions))

    def close(self) -> None:
        """The pipeline stops: close the state's store (a RocksDB store's databases and locks)."""
        self.step.store.close()

    def commit(self, decoded: Decoded) -> None:
        """Write the keys' new state of a scored batch."""
        if decoded.state_update is not None:
            self.step.apply(decoded.state_update)

    def remember(self, decoded: Decoded, scored: np.ndarray, predictions: np.ndarray, version: str) -> None:
        """Keep each key's last prediction (``scored``: the rows of ``decoded`` the predictions are for)."""
        if decoded.state_update is not None and decoded.state_rows is not None:
            self.step.remember(decoded.state_update, decoded.state_rows[scored], predictions, version)


def _without(decoded: Decoded, positions: Sequence[int], error: str, message: str) -> Decoded:
    """``decoded`` without the events at ``positions`` (of its rows), each rejected for ``error``."""
    keep = np.ones(len(decoded), dtype=bool)
    keep[list(positions)] = False
    return decoded.narrowed(keep, [Reject(int(decoded.rows[p]), error, message) for p in positions])
