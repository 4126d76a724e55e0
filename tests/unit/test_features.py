"""Per-key features (streams.features): each aggregation against a straightforward per-event
reference, whatever the batches, and restored state continuing as if never interrupted."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import StateError
from streams.features.snapshot import decode_state, encode_state
from streams.features.spec import WINDOW_KINDS, LastEvents, SincePrevious, StateSpec, Window
from streams.features.step import SWEEP_EVERY_BATCHES, FeatureStep, occurrence_rank
from streams.features.store import KeyedStore

FIELDS = ("a", "b")


def spec_with(window_ms: int, ttl_ms: int, capacity: int) -> StateSpec:
    features = [
        LastEvents("seq", n=3, fields=("b", "a"), mask=True),
        LastEvents("seq_now", n=2, fields=("a",), include_current=True),
        SincePrevious("gap"),
    ]
    for kind in WINDOW_KINDS:
        field = None if kind == "count" else "a"
        features.append(Window(f"{kind}_before", kind, field, window_ms))
        features.append(Window(f"{kind}_now", kind, field, window_ms, include_current=True))
    features.append(Window("sum_b", "sum", "b", window_ms))
    return StateSpec(tuple(features), ttl_ms=ttl_ms, history_events=capacity)


def reference(spec: StateSpec, events: list[tuple]) -> dict[str, list]:
    """Event by event, with plain Python lists: what the features mean, written the obvious way."""
    history: dict[tuple, list[tuple[int, dict[str, float]]]] = {}
    newest: dict[int, int] = {}
    out: dict[str, list] = {f.name: [] for f in spec.features}
    for partition, key, t, values in events:
        past = history.setdefault((partition, key), [])
        newest[partition] = max(t, newest.get(partition, t))
        if past and max(et for et, _ in past[-spec.capacity :]) < newest[partition] - spec.ttl_ms:
            past.clear()
        now = [*past, (t, values)]
        for feature in spec.features:
            seen = (now if feature.include_current else past)[-spec.capacity :]
            out[feature.name].append(one_feature(feature, seen, t, past))
        past.append((t, values))
    return out


def one_feature(feature, seen, t, past):
    if isinstance(feature, SincePrevious):
        return max(t - past[-1][0], 0) / 1000 if past else 0.0
    if isinstance(feature, LastEvents):
        rows = [[v[f] for f in feature.fields] + ([1.0] if feature.mask else []) for _, v in seen[-feature.n :]]
        width = len(feature.fields) + int(feature.mask)
        return [[0.0] * width] * (feature.n - len(rows)) + rows
    xs = [v[feature.field] if feature.field else 0.0 for et, v in seen if t - feature.window_ms < et <= t]
    if not xs:
        return 0.0
    mean = sum(xs) / len(xs)
    return {
        "count": len(xs),
        "sum": sum(xs),
        "mean": mean,
        "min": min(xs),
        "max": max(xs),
        "std": math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)),
        "distinct": len(set(xs)),
    }[feature.kind]


def run(step: FeatureStep, events: list[tuple], cuts: list[int], start: int = 0) -> dict[str, np.ndarray]:
    """Feed ``events`` to ``step`` in batches cut at ``cuts``; offsets count from ``start``."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(events)), len(events)]
    parts: dict[str, list[np.ndarray]] = {f.name: [np.zeros((0, *f.shape), np.float32)] for f in step.spec.features}
    for lo, hi in itertools.pairwise(bounds):
        batch = events[lo:hi]
        if not batch:
            continue
        arguments = (
            [("t", p) for p, _, _, _ in batch],
            [k for _, k, _, _ in batch],
            np.array([t for _, _, t, _ in batch]),
            np.array([[v[f] for f in step.spec.fields] for *_, v in batch], dtype=np.float32),
            np.arange(start + lo, start + hi),
        )
        got, update = step.compute(*arguments)
        if lo % 2:  # a batch computed again (the model was down) sees the state as it was
            got, update = step.compute(*arguments)
        step.apply(update)
        for partition in (("t", 0), ("t", 1)):  # as a commit does: forgetting idle keys changes no feature
            step.sweep(partition)
        for name, array in got.items():
            parts[name].append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


# Values exact in float32 (quarters), so the reference's float64 sums compare closely.
values = st.fixed_dictionaries({f: st.integers(-40, 40).map(lambda i: i / 4) for f in FIELDS})
event = st.tuples(
    st.integers(0, 1), st.sampled_from([b"k1", b"k2", b"k3", b"k\x00\xff"]), st.integers(0, 60_000), values
)


@settings(max_examples=150, deadline=None)
@given(
    events=st.lists(event, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    window_ms=st.integers(1, 30_000),
    ttl_ms=st.integers(1, 70_000),
    capacity=st.integers(3, 6),
)
def test_each_feature_matches_the_per_event_reference_whatever_the_batches(events, cuts, window_ms, ttl_ms, capacity):
    spec = spec_with(window_ms, ttl_ms, capacity)
    events = [(p, k, 1_700_000_000_000 + t, v) for p, k, t, v in events]
    got = run(FeatureStep(spec), events, cuts)
    expected = reference(spec, events)
    for feature in spec.features:
        want = np.asarray(expected[feature.name], dtype=np.float64).reshape(len(events), *feature.shape)
        np.testing.assert_allclose(got[feature.name], want, rtol=1e-6, atol=1e-5, err_msg=feature.name)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(event, min_size=1, max_size=50), cut=st.integers(0, 50), cuts=st.lists(st.integers(0, 50)))
def test_state_restored_from_snapshots_continues_as_if_never_interrupted(events, cut, cuts):
    spec = spec_with(10_000, 40_000, 4)
    cut = min(cut, len(events))
    whole = run(FeatureStep(spec), events, cuts)
    first = FeatureStep(spec)
    run(first, events[:cut], cuts)
    restored = FeatureStep(spec)
    restored.latest_ms = dict(first.latest_ms)  # the changelog's event-time record per partition
    for partition, table in first.store.tables.items():
        for key, slot in table.items():
            times, vals = first.store.events(slot)
            data = encode_state(spec.layout_id, int(first.store.offset[slot]), times, vals)
            t, v, offset = decode_state(data, spec.layout_id, len(spec.fields), spec.capacity)
            restored.store.load(partition, key, t, v, offset)
    rest = run(restored, events[cut:], [c - cut for c in cuts], start=cut)
    for name, array in whole.items():
        np.testing.assert_array_equal(array[cut:], rest[name], err_msg=name)


def test_two_events_of_one_key_in_one_batch_see_each_other_in_order():
    spec = StateSpec((Window("n", "count", None, 1_000_000), LastEvents("last", 2, ("a",))), ttl_ms=10**9)
    step = FeatureStep(spec)
    got, _ = step.compute(
        [("t", 0)] * 4,
        [b"x", b"y", b"x", b"x"],
        np.array([1, 2, 3, 4]),
        np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32),
        np.arange(4),
    )
    assert got["n"].tolist() == [0, 0, 1, 2]
    assert got["last"][:, :, 0].tolist() == [[0, 0], [0, 0], [0, 1], [1, 3]]


def test_occurrence_rank_counts_earlier_positions_of_the_same_slot():
    assert occurrence_rank(np.array([5, 3, 5, 5, 3, 9])).tolist() == [0, 0, 1, 2, 1, 0]


def test_sweep_forgets_idle_keys_and_reports_them_as_tombstones():
    spec = StateSpec((SincePrevious("gap"),), ttl_ms=100, history_events=2)
    step = FeatureStep(spec)
    step.apply(
        step.compute(
            [("t", 0)] * 2, [b"old", b"new"], np.array([0, 1_000]), np.zeros((2, 0), dtype=np.float32), np.arange(2)
        )[1]
    )
    step.store.take_changed(("t", 0))
    assert step.sweep(("t", 0)) == 1
    assert step.store.take_changed(("t", 0)) == [(b"old", None)]
    assert list(step.store.tables[("t", 0)]) == [b"new"]


def test_store_grows_past_its_first_slots_and_reuses_freed_ones():
    store = KeyedStore(2, 1, initial_slots=2)
    keys = [bytes([i]) for i in range(5)]
    slots = store.slots_for([("t", 0)] * 5, keys)
    assert sorted(slots.tolist()) == [0, 1, 2, 3, 4]
    store.drop_partitions([("t", 0)])
    assert len(store) == 0
    again = store.slots_for([("t", 1)], [b"z"])
    assert again[0] in range(5)


def test_a_snapshot_of_another_layout_is_refused_with_what_to_do():
    spec = spec_with(1, 1, 4)
    other = StateSpec(spec.features, ttl_ms=1, history_events=8)
    data = encode_state(other.layout_id, 7, np.zeros(1, dtype=np.int64), np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(StateError, match="another features config"):
        decode_state(data, spec.layout_id, 2, 4)
    with pytest.raises(StateError, match="does not match"):
        decode_state(data[:-1], other.layout_id, 2, 8)
    with pytest.raises(StateError, match="magic"):
        decode_state(b"XX" + data[2:], other.layout_id, 2, 8)


def test_a_key_idle_longer_than_its_ttl_starts_again_from_nothing():
    spec = StateSpec((Window("n", "count", None, 10**9),), ttl_ms=100)
    step = FeatureStep(spec)
    times = np.array([0, 100, 201, 250])  # idle exactly the TTL keeps the key; past it, forgotten
    got, _ = step.compute([("t", 0)] * 4, [b"k"] * 4, times, np.zeros((4, 0), dtype=np.float32), np.arange(4))
    assert got["n"].tolist() == [0, 1, 0, 1]


def test_idleness_counts_from_the_partitions_newest_time_so_a_sweep_never_changes_a_late_event():
    spec = StateSpec((Window("n", "count", None, 10**9),), ttl_ms=100)
    step = FeatureStep(spec)
    none = np.zeros((1, 0), dtype=np.float32)
    step.apply(step.compute([("t", 0)], [b"k"], np.array([0]), none, np.arange(1))[1])
    step.apply(step.compute([("t", 0)], [b"other"], np.array([500]), none, np.arange(1, 2))[1])
    assert step.sweep(("t", 0)) == 1  # k is 500 ms behind the partition: forgotten
    got, _ = step.compute([("t", 0)], [b"k"], np.array([50]), none, np.arange(2, 3))  # stamped early
    assert got["n"].tolist() == [0]  # as without the sweep: k was already idle past its TTL


def test_the_demo_transformer_trains_on_the_history_the_stream_feature_serves():
    from app.config.pipeline_toml import DEMO_STATE
    from models.synthetic import account_histories, generate, history_values

    data = generate(3000, seed=3)
    values = history_values(data)
    keys = [f"acct-{a:05d}".encode() for a in data.accounts.tolist()]
    assert "history" in DEMO_STATE["fraud-transformer"]
    spec = StateSpec((LastEvents("history", 16, ("amount", "merchant_risk", "foreign"), True, True),), ttl_ms=10**12)
    step = FeatureStep(spec)
    served = []
    for start in range(0, len(keys), 256):
        stop = start + 256
        got, update = step.compute(
            [("t", 0)] * len(keys[start:stop]), keys[start:stop], np.zeros(len(keys[start:stop])),
            values[start:stop], np.arange(start, start + len(keys[start:stop])),
        )  # fmt: skip
        step.apply(update)
        served.append(got["history"])
    np.testing.assert_array_equal(np.concatenate(served), account_histories(data.accounts, values))


def test_one_event_stamped_long_ago_does_not_age_its_key():
    spec = StateSpec((Window("n", "count", None, 10**9),), ttl_ms=100)
    step = FeatureStep(spec)
    times = np.array([1_000, 1_050, 0, 1_080])  # a correction stamped long before, then on as usual
    got, _ = step.compute([("t", 0)] * 4, [b"k"] * 4, times, np.zeros((4, 0), dtype=np.float32), np.arange(4))
    # The late event's window ends at its own time (nothing before 0); the next one still sees all
    # three: the key's newest event (1,050) is within the TTL, whatever the last one was stamped.
    assert got["n"].tolist() == [0, 1, 0, 3]


def test_a_step_without_a_changelog_tracks_no_changes_and_forgets_idle_keys_itself():
    spec = StateSpec((SincePrevious("gap"),), ttl_ms=10)
    step = FeatureStep(spec, changelog=False)
    none = np.zeros((1, 0), dtype=np.float32)
    for i in range(SWEEP_EVERY_BATCHES):
        step.apply(step.compute([("t", 0)], [str(i).encode()], np.array([100 * i]), none, np.array([i]))[1])
    assert len(step.store) == 1  # every key but the newest went idle and was swept
    assert step.store.take_changed(("t", 0)) == []
