"""A live shadow's gathering (streams.flow.shadow_gather): the champion's small batches become one
of the shadow's, by rows or by time, in order, and only batches that can be scored as one are
joined. The timer is the event loop's: a test waits for the hand-over, never for a duration."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from streams.flow.scored_groups import ScoredGroup
from streams.flow.shadow_gather import Gatherer, joinable, merge


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int
    timestamp: int = 0
    key: bytes | None = None
    value: bytes | None = None


def group(offsets: list[int], rows: list[int], *, served: str = "champ", width: int = 3) -> ScoredGroup:
    """A batch of records at ``offsets``, of which ``rows`` were scored by ``served``."""
    records = [Rec("in", 0, o) for o in offsets]
    ids = [f"e{offsets[r]}" for r in rows]
    inputs = [np.array([[float(offsets[r])] * width for r in rows], dtype=np.float32)]
    scores = np.array([offsets[r] / 100 for r in rows], dtype=np.float32)
    return ScoredGroup(records, np.array(rows, dtype=np.int64), ids, inputs, scores, served, "1")


def test_merging_keeps_each_event_with_its_own_record_input_and_score():
    first, second = group([10, 11, 12], [0, 2]), group([20, 21], [1])
    merged = merge([first, second])
    assert [merged.records[r].offset for r in merged.rows.tolist()] == [10, 12, 21]
    assert merged.ids == ["e10", "e12", "e21"]
    assert merged.inputs[0][:, 0].tolist() == [10.0, 12.0, 21.0]
    assert merged.served.tolist() == np.array([0.10, 0.12, 0.21], dtype=np.float32).tolist()
    assert (merged.served_name, merged.served_version) == ("champ", "1")


def test_only_batches_of_the_same_served_model_and_input_shape_join():
    base = group([1], [0])
    assert joinable(base, group([2], [0]))
    assert not joinable(base, group([2], [0], served="canary")), "each record names the model it shadows"
    assert not joinable(base, group([2], [0], width=4)), "padded to another length: not one batch"


async def test_batches_are_handed_over_when_they_reach_max_rows():
    ready: list[ScoredGroup] = []
    gatherer = Gatherer(ready.append, gather_s=3600, max_rows=4)
    gatherer.offer(group([1, 2], [0, 1]))
    assert ready == [] and gatherer.pending_rows == 2
    gatherer.offer(group([3, 4], [0, 1]))
    assert [len(g.rows) for g in ready] == [4] and gatherer.pending_rows == 0
    gatherer.offer(group([5, 6, 7], [0, 1, 2]))
    gatherer.offer(group([8, 9], [0, 1]))  # would make 5: the three go first, never past max_rows
    assert [len(g.rows) for g in ready] == [4, 3] and gatherer.pending_rows == 2


async def test_a_partial_gathering_is_handed_over_when_its_time_is_up():
    handed = asyncio.Event()
    ready: list[ScoredGroup] = []

    def on_ready(g: ScoredGroup) -> None:
        ready.append(g)
        handed.set()

    gatherer = Gatherer(on_ready, gather_s=0.01, max_rows=1000)
    gatherer.offer(group([1], [0]))
    gatherer.offer(group([2], [0]))
    await asyncio.wait_for(handed.wait(), 10)
    assert [g.ids for g in ready] == [["e1", "e2"]], "both batches, in one, in order"


async def test_a_batch_that_cannot_join_hands_over_the_gathering_first_in_order():
    ready: list[ScoredGroup] = []
    gatherer = Gatherer(ready.append, gather_s=3600, max_rows=1000)
    gatherer.offer(group([1], [0]))
    gatherer.offer(group([2], [0], served="canary"))
    gatherer.flush()
    assert [(g.served_name, g.ids) for g in ready] == [("champ", ["e1"]), ("canary", ["e2"])]
    gatherer.flush()
    assert len(ready) == 2, "nothing gathered: nothing handed over"


async def test_without_a_gathering_time_each_batch_is_handed_over_at_once():
    ready: list[ScoredGroup] = []
    gatherer = Gatherer(ready.append, gather_s=0, max_rows=1000)
    gatherer.offer(group([1], [0]))
    gatherer.offer(group([2], [0]))
    assert [g.ids for g in ready] == [["e1"], ["e2"]]
