"""A live shadow's batches, gathered: several of the champion's scored groups scored as one.

What a shadow costs the worker is mostly per batch, not per event: the hop to its model (a
pipe to its process and back), a request of its producer, its statistics, each a few hundred
microseconds of the event loop the champion shares. At low load the champion's batches are
small (a budget-bound batcher sends what it has), so a shadow scoring each of them cost the
worker more CPU than the champion itself (``bench/results/shadow.md``). Gathered for up to
``gather_s``, or ``max_rows`` events, they pay those costs once per gathered batch. A shadow
has no budget to keep: its records arrive that much later, and nothing waits for them.

Groups are joined only when they can be scored as one batch: the same served model (each
record names it) and inputs of the same shape past the batch axis (a model whose inputs are
padded to each batch's longest sequence gets its batches one by one, as before).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import chain

import numpy as np

from streams.flow.scored_groups import ScoredGroup


class Gatherer:
    """Collects offered groups and hands ``ready`` one merged group per ``gather_s`` or ``max_rows``.

    Runs on the event loop only: ``offer`` and the timer it sets never race. ``ready`` must not
    block (a shadow puts the group on its queue, or counts it skipped)."""

    def __init__(self, ready: Callable[[ScoredGroup], None], *, gather_s: float, max_rows: int) -> None:
        self.ready = ready
        self.gather_s = gather_s
        self.max_rows = max(1, max_rows)
        self._groups: list[ScoredGroup] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending_rows(self) -> int:
        return self._rows

    def offer(self, group: ScoredGroup) -> None:
        if self._groups and (not joinable(self._groups[0], group) or self._rows + len(group.rows) > self.max_rows):
            self.flush()  # never past max_rows, unless a group alone is
        self._groups.append(group)
        self._rows += len(group.rows)
        if self._rows >= self.max_rows or self.gather_s <= 0:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.gather_s, self.flush)

    def flush(self) -> None:
        """Hand over what is gathered now (the timer's due, a stop's drain, a group that cannot join)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._groups:
            return
        groups, self._groups, self._rows = self._groups, [], 0
        self.ready(merge(groups))


def joinable(first: ScoredGroup, group: ScoredGroup) -> bool:
    """Whether ``group`` can be scored in one batch with ``first`` (and recorded as the same served model's)."""
    if (group.served_name, group.served_version) != (first.served_name, first.served_version):
        return False
    if len(group.inputs) != len(first.inputs) or group.served.shape[1:] != first.served.shape[1:]:
        return False
    return all(
        a.shape[1:] == b.shape[1:] and a.dtype == b.dtype for a, b in zip(first.inputs, group.inputs, strict=True)
    )


def merge(groups: list[ScoredGroup]) -> ScoredGroup:
    """One group of all of ``groups``' events, in order: their batches' records end to end, and
    each group's rows moved by the records before its batch."""
    if len(groups) == 1:
        return groups[0]
    records = list(chain.from_iterable(g.records for g in groups))
    starts = np.cumsum([0] + [len(g.records) for g in groups[:-1]])
    rows = np.concatenate([np.asarray(g.rows, dtype=np.int64) + start for g, start in zip(groups, starts, strict=True)])
    first = groups[0]
    return ScoredGroup(
        records=records,
        rows=rows,
        ids=list(chain.from_iterable(g.ids for g in groups)),
        inputs=[np.concatenate([g.inputs[k] for g in groups]) for k in range(len(first.inputs))],
        served=np.concatenate([g.served for g in groups]),
        served_name=first.served_name,
        served_version=first.served_version,
    )
