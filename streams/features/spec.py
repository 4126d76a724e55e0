"""What a pipeline's ``[pipelines.NAME.state]`` table declares, as frozen dataclasses.

Semantics (the README's "Features" section says the same to users): an event's features are
computed from the earlier events of its key (the Kafka record key) in partition order, plus the
event itself where ``include_current`` is set. Time is the record's timestamp (milliseconds);
a window of ``window_ms`` holds the key's events whose time lies in ``(t - window_ms, t]``, so an
earlier event stamped later than the event (out of order) is not in its window. A key keeps
its last ``history_events`` events: a window never sees more. A key starts again from nothing
once its newest kept event is more than ``ttl_ms`` behind the partition's event time (the
newest timestamp seen in the partition, this event included).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# The aggregations over an event-time window of one numeric field (count needs no field).
WindowKind = Literal["count", "sum", "mean", "min", "max", "std", "distinct"]
WINDOW_KINDS: tuple[WindowKind, ...] = ("count", "sum", "mean", "min", "max", "std", "distinct")
StoreKind = Literal["memory", "rocksdb"]
# Bounds the config enforces: events kept per key, and any duration (about a century).
MAX_HISTORY_EVENTS = 100_000
MAX_DURATION_MS = 100 * 366 * 24 * 3600 * 1000


@dataclass(frozen=True)
class LastEvents:
    """The key's last ``n`` events' ``fields`` as an ``(n, len(fields))`` sequence, oldest first and
    right-aligned, zeros where the key has fewer; with ``mask``, one more column: 1 for an event, 0
    for padding."""

    name: str
    n: int
    fields: tuple[str, ...]
    mask: bool = False
    include_current: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, len(self.fields) + int(self.mask))


@dataclass(frozen=True)
class Window:
    """One aggregation of ``field`` over the key's events in ``(t - window_ms, t]``. An empty window
    gives 0 for every kind (``count`` tells it apart). ``std`` is the population standard
    deviation; ``distinct`` counts distinct values exactly (among the events the key keeps)."""

    name: str
    kind: WindowKind
    field: str | None
    window_ms: int
    include_current: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return ()


@dataclass(frozen=True)
class SincePrevious:
    """Seconds from the key's previous event to this one (0 for a key's first event, and 0 when
    the previous event is stamped later: out of order)."""

    name: str
    include_current: bool = False  # always false: kept so every feature answers the same question

    @property
    def shape(self) -> tuple[int, ...]:
        return ()


Feature = LastEvents | Window | SincePrevious


@dataclass(frozen=True)
class StateSpec:
    features: tuple[Feature, ...]
    ttl_ms: int
    history_events: int = 64
    store: StoreKind = "memory"
    # A "rocksdb" store's folder (a database per input partition in it) and the keys it keeps in memory.
    directory: Path | None = None
    cache_keys: int = 100_000

    # Cached: the changelog asks for these once per key it writes or restores.
    @functools.cached_property
    def fields(self) -> tuple[str, ...]:
        """The event fields the state keeps, in first-mentioned order (each a number per event)."""
        names: list[str] = []
        for feature in self.features:
            wanted = feature.fields if isinstance(feature, LastEvents) else (getattr(feature, "field", None),)
            names += [f for f in wanted if f is not None and f not in names]
        return tuple(names)

    @functools.cached_property
    def capacity(self) -> int:
        """Events kept per key: ``history_events``, or more if a sequence asks for more."""
        return max([self.history_events] + [f.n for f in self.features if isinstance(f, LastEvents)])

    def feature(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @functools.cached_property
    def layout_id(self) -> bytes:
        """Eight bytes naming what a key's stored state holds: a changelog written under another
        layout cannot be restored into this one."""
        text = f"v1;capacity={self.capacity};fields={','.join(self.fields)}"
        return hashlib.sha256(text.encode()).digest()[:8]
