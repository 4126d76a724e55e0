"""Who else sees each group of events a model scored, besides the sink: shadows, and recorders.

The pipeline offers every scored group (its events' positions in the batch, their ids, the
model's inputs with their per-key features, and the served predictions) to each of its shadows
(a ``Shadow`` scores the same inputs with another model), then to each ``ScoredGroupWatcher`` it
was given (``Pipeline(watchers=...)``): ``ServedRecorder`` hands the served predictions to a
callback, as a backfill collecting every model's scores for an evaluation needs. A shadow hands
its own predictions to the same kind of callback (``Shadow(on_scored=...)``), so one collector
sees every model's scores by event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from streams.records import SourceRecord

# (the batch's records, the batch indices of the scored events, their ids, one prediction per event)
OnScored = Callable[[Sequence[SourceRecord], np.ndarray, Sequence[object], np.ndarray], None]


@dataclass(frozen=True)
class ScoredGroup:
    """Some events of a batch, scored by one serving model: what shadows and watchers are offered."""

    records: Sequence[SourceRecord]  # the whole batch
    rows: np.ndarray  # the batch indices of the group's events
    ids: list[object]
    inputs: list[np.ndarray]  # the model's inputs, per-key features included, row for row
    served: np.ndarray  # the served predictions, row for row
    served_name: str
    served_version: str


class ScoredGroupWatcher(Protocol):
    """What ``Pipeline(watchers=...)`` offers each scored group to, after its predictions are checked
    (a ``Shadow`` has the same ``offer``)."""

    async def offer(self, group: ScoredGroup) -> None: ...


class ServedRecorder:
    """Hands each served group's predictions to ``on_served``, on the event loop, at once: the
    cost is the callback's, so keep it to a few numpy operations per group."""

    def __init__(self, on_served: OnScored) -> None:
        self.on_served = on_served

    async def offer(self, group: ScoredGroup) -> None:
        if len(group.rows):
            self.on_served(group.records, group.rows, group.ids, group.served)
