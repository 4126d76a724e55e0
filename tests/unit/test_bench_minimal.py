"""The minimal pipeline's per-key history builds what every peer (and sluice's demo state) builds."""

from __future__ import annotations

import numpy as np

from bench.minimal import History, HistoryEvent
from bench.peers import HISTORY_EVENTS, with_history


def event(i: int) -> HistoryEvent:
    return HistoryEvent(id=f"e{i}", features=[], amount=float(i), merchant_risk=-float(i), foreign=float(i % 2))


def test_history_rows_match_the_peers_for_each_key_over_more_events_than_it_keeps() -> None:
    history = History()
    kept: dict[bytes, list[list[float]]] = {}
    keys = [b"a", b"b", b"a"] * 12
    events = [event(i) for i in range(len(keys))]
    got = np.concatenate([history.batch(keys[i : i + 5], events[i : i + 5]) for i in range(0, len(keys), 5)])
    for row, (key, e) in enumerate(zip(keys, events, strict=True)):
        doc = {"amount": e.amount, "merchant_risk": e.merchant_risk, "foreign": e.foreign}
        expected, kept[key] = with_history(doc, kept.get(key, []))
        assert got[row].shape == (HISTORY_EVENTS, 4)
        assert got[row].tolist() == expected["history"], row
