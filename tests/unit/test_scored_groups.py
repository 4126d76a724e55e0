"""Who sees each scored group (streams.flow.scored_groups): a watcher given to the pipeline gets every
served group, after the shadows, with the served predictions by id; a shadow hands its own
predictions to ``on_scored`` as it makes them, so one collector sees every model's scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from streams.flow.scored_groups import ScoredGroup, ServedRecorder
from streams.records import SourceRecord
from tests.unit.test_roles import Champion, events, make_pipeline
from tests.unit.test_shadow import Slow, shadow_of


class Collected:
    def __init__(self) -> None:
        self.by_id: dict[object, float] = {}
        self.offsets: list[int] = []

    def __call__(self, records: Sequence[SourceRecord], rows: np.ndarray, ids: Sequence[object], p: np.ndarray) -> None:
        assert len(rows) == len(ids) == len(p)
        for row, i, x in zip(rows.tolist(), ids, p.tolist(), strict=True):
            self.by_id[i] = x
            self.offsets.append(records[row].offset)


async def test_a_watcher_sees_every_served_group_after_the_shadows_and_a_shadow_tells_its_scores():
    served, shadowed = Collected(), Collected()
    pipeline, sink = make_pipeline(Champion())
    shadow = shadow_of(Slow(offset=0.5), sink, wait=True, on_scored=shadowed)
    pipeline.shadows.append(shadow)
    order: list[str] = []
    real_offer = shadow.offer

    async def shadow_first(*args: object) -> None:
        order.append("shadow")
        await real_offer(*args)  # type: ignore[arg-type]

    shadow.offer = shadow_first  # type: ignore[method-assign]

    def served_last(*args: object) -> None:
        order.append("watcher")
        served(*args)  # type: ignore[arg-type]

    pipeline.watchers.append(ServedRecorder(served_last))
    # Event 3 has no x: a dead letter, offered to no one.
    batch = events(6)
    batch[3] = replace(batch[3], value=b'{"id": 3}')
    await pipeline.process(batch)
    await pipeline.process(events(4, start=6))
    await shadow.drain()

    assert order == ["shadow", "watcher", "shadow", "watcher"]
    expected = {i: i + 1.0 for i in [0, 1, 2, 4, 5, 6, 7, 8, 9]}  # the champion sums [i, 1]
    assert served.by_id == expected
    assert served.offsets == [0, 1, 2, 4, 5, 6, 7, 8, 9], "the records and rows locate each event"
    assert shadowed.by_id == {i: x + 0.5 for i, x in expected.items()}
    assert len(sink.on("out-shadow")) == 9


async def test_a_recorder_is_not_called_for_an_empty_group():
    calls: list[int] = []
    recorder = ServedRecorder(lambda records, rows, ids, p: calls.append(len(rows)))
    empty = np.zeros(0, dtype=np.int64)
    await recorder.offer(ScoredGroup(events(1), empty, [], [], np.zeros(0), "m", "1"))
    await recorder.offer(ScoredGroup(events(1), np.array([0]), [0], [np.zeros((1, 2))], np.ones(1), "m", "1"))
    assert calls == [1]
