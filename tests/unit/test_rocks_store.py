"""The RocksDB store gives the features of the memory store, event for event, whatever its cache
size (keys evicted to the database and read back), with a changelog (changes kept until a
commit) or without (a backfill), and a worker restarted on its local databases continues as if
never stopped."""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.features.local_db as local_db
from streams.errors import StateError
from streams.features.local_db import EVENT_TIME_KEY, KEY_PREFIX
from streams.features.rocks_store import RocksStore
from streams.features.serving import key_view
from streams.features.snapshot import encode_state
from streams.features.step import FeatureStep
from tests.unit.test_features import reference, spec_with

PARTITIONS = (("t", 0), ("t", 1))
values = st.fixed_dictionaries({f: st.integers(-40, 40).map(lambda i: i / 4) for f in ("a", "b")})
# Twelve keys: many more than the smallest caches.
event = st.tuples(st.integers(0, 1), st.sampled_from([b"k%d" % i for i in range(12)]), st.integers(0, 60_000), values)


def rocks_step(spec, directory: Path, cache_keys: int, *, live: bool) -> FeatureStep:
    store = RocksStore(
        spec.capacity,
        len(spec.fields),
        layout_id=spec.layout_id,
        directory=directory,
        cache_keys=cache_keys,
        track_changes=live,
    )
    step = FeatureStep(spec, store)
    if live:  # as a restore does, before any event of a partition is scored
        for partition in PARTITIONS:
            local = store.open(partition)
            if local is not None and local[1] is not None:
                step.latest_ms[partition] = local[1]
    return step


def commit(step: FeatureStep, written: list[int]) -> None:
    """What a commit does to the store: the changed keys' records (as ``Changelog.flush`` writes
    them), then, the transaction committed, the local copy takes them."""
    store = step.store
    for partition in PARTITIONS:
        step.sweep(partition)
        records = (
            [(EVENT_TIME_KEY, np.int64(step.latest_ms[partition]).tobytes())] if partition in step.latest_ms else []
        )
        for key, slot in store.take_changed(partition):
            value = (
                None
                if slot is None
                else encode_state(step.spec.layout_id, int(store.offset[slot]), *store.events(slot))
            )
            records.append((KEY_PREFIX + key, value))
        written[0] += len(records)
        store.persisted(partition, records, written[0])


def run(step: FeatureStep, events: list[tuple], cuts: list[int], start: int = 0) -> dict[str, np.ndarray]:
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(events)), len(events)]
    parts: dict[str, list[np.ndarray]] = {f.name: [np.zeros((0, *f.shape), np.float32)] for f in step.spec.features}
    written = [0]
    for lo, hi in itertools.pairwise(bounds):
        batch = events[lo:hi]
        arguments = (
            [PARTITIONS[p] for p, _, _, _ in batch],
            [k for _, k, _, _ in batch],
            np.array([t for _, _, t, _ in batch]),
            np.array([[v[f] for f in step.spec.fields] for *_, v in batch], dtype=np.float32),
            np.arange(start + lo, start + hi),
        )
        got, update = step.compute(*arguments)
        if lo % 2:  # computed again (the model was down): the first computation is never applied
            got, update = step.compute(*arguments)
        step.apply(update)
        if step.store.track_changes:
            commit(step, written)
        else:
            for partition in PARTITIONS:
                step.sweep(partition)
        for name, array in got.items():
            parts[name].append(array)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def assert_reference(spec, events, got):
    expected = reference(spec, events)
    for feature in spec.features:
        want = np.asarray(expected[feature.name], dtype=np.float64).reshape(len(events), *feature.shape)
        np.testing.assert_allclose(got[feature.name], want, rtol=1e-6, atol=1e-5, err_msg=feature.name)


@settings(max_examples=80, deadline=None)
@given(
    events=st.lists(event, max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=10),
    ttl_ms=st.integers(1, 70_000),
    cache_keys=st.integers(1, 6),
    live=st.booleans(),
)
def test_features_equal_the_reference_whatever_the_cache_size(events, cuts, ttl_ms, cache_keys, live):
    spec = spec_with(10_000, ttl_ms, 4)
    with tempfile.TemporaryDirectory() as directory:
        step = rocks_step(spec, Path(directory), cache_keys, live=live)
        try:
            assert_reference(spec, events, run(step, events, cuts))
        finally:
            step.store.close()


@settings(max_examples=40, deadline=None)
@given(events=st.lists(event, min_size=1, max_size=50), cut=st.integers(0, 50), cuts=st.lists(st.integers(0, 50)))
def test_a_worker_restarted_on_its_local_databases_continues_as_if_never_stopped(events, cut, cuts):
    spec = spec_with(10_000, 40_000, 4)
    cut = min(cut, len(events))
    with tempfile.TemporaryDirectory() as directory:
        first = rocks_step(spec, Path(directory), 3, live=True)
        whole = run(first, events[:cut], cuts)
        first.store.close()
        second = rocks_step(spec, Path(directory), 3, live=True)
        try:
            rest = run(second, events[cut:], [c - cut for c in cuts], start=cut)
        finally:
            second.store.close()
    assert_reference(spec, events, {n: np.concatenate([whole[n], rest[n]]) for n in whole})


def test_the_cache_stays_near_its_bound_and_keys_come_back_from_the_database(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = rocks_step(spec, tmp_path, 100, live=False)
    keys = [b"key-%d" % i for i in range(1000)]
    for round_ in range(3):
        for lo in range(0, 1000, 50):
            batch = keys[lo : lo + 50]
            _, update = step.compute(
                [PARTITIONS[0]] * 50, batch, np.full(50, 1_000 + round_), np.ones((50, 2), np.float32), np.arange(50)
            )
            step.apply(update)
            assert len(step.store) <= 100 + 50
    got, _ = step.compute([PARTITIONS[0]], [b"key-7"], np.array([2_000]), np.ones((1, 2), np.float32), np.arange(1))
    assert got["count_before"][0] == 3  # its three earlier events, read back from the database
    assert step.store.evicted > 2000
    step.store.close()
    assert not tmp_path.exists() or not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


def test_a_key_only_in_the_database_is_forgotten_after_its_ttl_with_a_tombstone(tmp_path):
    spec = spec_with(10_000, 5_000, 4)
    step = rocks_step(spec, tmp_path, 2, live=True)
    written = [0]
    for i, key in enumerate([b"a", b"b", b"c", b"d"]):
        _, update = step.compute(
            [PARTITIONS[0]], [key], np.array([1_000 + i]), np.ones((1, 2), np.float32), np.array([i])
        )
        step.apply(update)
        commit(step, written)
    _, update = step.compute([PARTITIONS[0]], [b"e"], np.array([60_000]), np.ones((1, 2), np.float32), np.array([9]))
    step.apply(update)
    step.sweep(PARTITIONS[0])
    forgotten = {key for key, slot in step.store.take_changed(PARTITIONS[0]) if slot is None}
    assert forgotten == {b"a", b"b", b"c", b"d"}
    step.store.close()


def test_a_database_of_another_layout_is_wiped_and_restored_from_the_beginning(tmp_path):
    step = rocks_step(spec_with(10_000, 5_000, 4), tmp_path, 10, live=True)
    _, update = step.compute([PARTITIONS[0]], [b"a"], np.array([1]), np.ones((1, 2), np.float32), np.array([0]))
    step.apply(update)
    commit(step, [0])
    assert step.store.open(PARTITIONS[0]) is not None
    step.store.close()
    other = RocksStore(5, 2, layout_id=b"otherlay", directory=tmp_path, cache_keys=10)
    assert other.open(PARTITIONS[0]) is None
    assert other.key_count(PARTITIONS[0]) == 0
    other.close()


def hold_database(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the database at ``path`` for ``seconds``; returns once it holds it."""
    code = (
        "import sys, time\nfrom rocksdict import Options, Rdict\n"
        f"db = Rdict({str(path)!r}, Options(raw_mode=True))\nprint('held', flush=True)\n"
        f"time.sleep({seconds})\ndb.close()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_database_locked_by_another_process_is_replaced_by_a_private_one(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(local_db, "LOCK_WAIT_S", 0.2)
    spec = spec_with(10_000, 5_000, 4)
    holder = hold_database(tmp_path / "t-0", 60)
    try:
        second = rocks_step(spec, tmp_path, 10, live=True)
        assert "in use by another process" in caplog.text
        private = [p for p in tmp_path.iterdir() if p.name.count(".") == 1]
        assert private
        second.store.close()
        assert not any(p.exists() for p in private)
    finally:
        holder.kill()
        holder.communicate()


@pytest.mark.parametrize("topic", ["..", ".", "a/b", "a\\b"])
def test_a_topic_name_cannot_climb_out_of_the_state_directory(tmp_path, topic):
    store = RocksStore(4, 2, layout_id=b"12345678", directory=tmp_path, cache_keys=10)
    with pytest.raises(StateError, match="cannot keep the state"):
        store.open((topic, 0))


def test_a_database_sluice_did_not_write_is_emptied_not_trusted(tmp_path):
    from rocksdict import Options, Rdict

    path = tmp_path / "t-0"
    foreign = Rdict(str(path), Options(raw_mode=True))
    foreign[b"kx"] = b"not a sluice state"
    foreign.close()
    spec = spec_with(10_000, 5_000, 4)
    step = rocks_step(spec, tmp_path, 10, live=True)
    got, _ = step.compute([PARTITIONS[0]], [b"x"], np.array([1]), np.ones((1, 2), np.float32), np.array([0]))
    assert got["count_before"][0] == 0
    step.store.close()


def restarted(spec, directory: Path, cache_keys: int = 1) -> FeatureStep:
    """A new worker's store on the same folder (nothing cached): what its restore finds."""
    return rocks_step(spec, directory, cache_keys, live=True)


def on_disk(spec, directory: Path, *keys: list[bytes]) -> FeatureStep:
    """One event of each key of ``keys[i]`` in partition i, scored and committed, then a restarted
    worker's store: the keys' state is in the database only."""
    step = rocks_step(spec, directory, 1, live=True)
    for partition, batch in zip(PARTITIONS, keys, strict=False):
        n = len(batch)
        _, update = step.compute([partition] * n, batch, np.full(n, 5), np.ones((n, 2), np.float32), np.arange(n))
        step.apply(update)
    commit(step, [0])
    step.store.close()
    return restarted(spec, directory)


def damage(step: FeatureStep, key: bytes, value: bytes = b"damaged", partition=PARTITIONS[0]) -> None:
    db = step.store.databases.get(partition)
    assert db is not None and db.get(KEY_PREFIX + key) is not None
    db[KEY_PREFIX + key] = value


def test_a_damaged_record_read_to_serve_a_key_raises_and_changes_nothing(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x", b"y", b"z"])
    damage(step, b"x")
    db = step.store.databases.get(PARTITIONS[0])
    before = {k: v for k, v in db.items()}
    cached = len(step.store)
    with pytest.raises(StateError, match=r"t\[0\].*damaged.*rebuilt from the changelog"):
        key_view(step, PARTITIONS[0], b"x")
    assert {k: v for k, v in db.items()} == before  # nothing wiped, nothing written
    assert len(step.store) == cached
    assert step.store.databases.get(PARTITIONS[0]) is db
    view = key_view(step, PARTITIONS[0], b"y")  # a healthy key of the partition is still served
    assert view is not None and view["events_kept"] == 1 and view["latest_event"] == {"offset": 1, "event_ts": 5}
    assert {k: v for k, v in db.items()} == before and len(step.store) == cached
    step.store.close()


def test_a_partition_found_damaged_by_a_read_stops_its_next_batch_before_scoring_it(tmp_path, caplog):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x", b"y"], [b"w"])
    damage(step, b"x")
    with pytest.raises(StateError):
        key_view(step, PARTITIONS[0], b"x")
    generation = step.store.generation
    with pytest.raises(StateError, match="nothing of this batch scored; restart the worker"):
        step.compute([PARTITIONS[0]], [b"y"], np.array([9]), np.ones((1, 2), np.float32), np.array([7]))
    assert step.store.generation == generation  # no state computed for the batch
    # Another partition's batches go on; what its commits bring is not written to the damaged copy.
    got, update = step.compute([PARTITIONS[1]], [b"w"], np.array([9]), np.ones((1, 2), np.float32), np.array([8]))
    assert got["count_before"][0] == 1
    step.apply(update)
    step.store.persisted(PARTITIONS[0], [(KEY_PREFIX + b"y", None)], 99)
    step.store.close()
    second = restarted(spec, tmp_path)  # the restart: the copy is emptied and restored from the changelog
    assert second.store.open(PARTITIONS[0]) is None
    assert second.store.open(PARTITIONS[1]) is not None
    assert "was found damaged" in caplog.text
    second.store.close()


def test_a_damaged_record_read_by_a_batch_stops_it_and_the_copy_is_rebuilt_at_the_restart(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x", b"y"])
    damage(step, b"x", b"SK1 damaged")
    with pytest.raises(StateError, match=r"damaged.*nothing of this batch scored"):
        step.compute([PARTITIONS[0]] * 2, [b"y", b"x"], np.array([9, 9]), np.ones((2, 2), np.float32), np.arange(2))
    # Never taken for a key with nothing, however often asked.
    with pytest.raises(StateError):
        step.compute([PARTITIONS[0]], [b"x"], np.array([9]), np.ones((1, 2), np.float32), np.array([2]))
    step.store.close()
    second = restarted(spec, tmp_path)
    assert second.store.open(PARTITIONS[0]) is None
    second.store.close()


def test_a_partition_found_damaged_is_rebuilt_when_it_comes_back_without_a_restart(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x", b"y"])
    damage(step, b"x")
    with pytest.raises(StateError):
        key_view(step, PARTITIONS[0], b"x")
    step.drop_partitions([PARTITIONS[0]])  # revoked (or restored again: a restore drops it first)
    assert step.store.open(PARTITIONS[0]) is None  # assigned again: restored from the changelog's beginning
    got, _ = step.compute([PARTITIONS[0]], [b"y"], np.array([9]), np.ones((1, 2), np.float32), np.array([2]))
    assert got["count_before"][0] == 0  # nothing restored here: what the changelog restore would bring
    step.store.close()


def test_a_worker_stopped_after_serving_a_damaged_record_rebuilds_the_copy_at_its_restart(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x", b"y"])
    damage(step, b"x")
    with pytest.raises(StateError):
        key_view(step, PARTITIONS[0], b"x")
    step.store.close()  # stopped (SIGTERM) before any batch of the partition
    second = restarted(spec, tmp_path)
    assert second.store.open(PARTITIONS[0]) is None
    assert second.store.open(PARTITIONS[1]) is not None
    second.store.close()


@pytest.mark.parametrize("record", [b"m:checkpoint", b"w"])
def test_a_damaged_checkpoint_or_event_time_record_rebuilds_the_copy_instead_of_crashing(tmp_path, record):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x"])
    step.store.databases.get(PARTITIONS[0])[record] = b"bad"
    step.store.close()
    second = restarted(spec, tmp_path)
    assert second.store.open(PARTITIONS[0]) is None
    second.store.close()


def test_a_database_rocksdb_finds_damaged_is_emptied_and_rebuilt(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x"])
    step.store.close()
    (tmp_path / "t-0" / "CURRENT").write_text("garbage\n")
    second = restarted(spec, tmp_path)
    assert second.store.open(PARTITIONS[0]) is None
    assert second.store.open(PARTITIONS[1]) is not None  # the other partition's copy is kept
    second.store.close()


class Unreadable:
    """A database whose reads RocksDB refuses (a block whose checksum does not match)."""

    def __init__(self, db) -> None:
        self.db = db

    def get(self, *args):
        raise Exception("Corruption: block checksum mismatch")  # what rocksdict raises

    def __setitem__(self, key, value) -> None:
        self.db[key] = value

    def close(self) -> None:
        self.db.close()


def test_a_read_rocksdb_refuses_is_a_damaged_record_not_a_key_with_nothing(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = on_disk(spec, tmp_path, [b"x"])
    databases = step.store.databases
    databases._dbs[PARTITIONS[0]] = Unreadable(databases._dbs[PARTITIONS[0]])
    with pytest.raises(StateError, match="block checksum mismatch"):
        key_view(step, PARTITIONS[0], b"x")
    with pytest.raises(StateError, match="nothing of this batch scored"):
        step.compute([PARTITIONS[0]], [b"x"], np.array([9]), np.ones((1, 2), np.float32), np.array([1]))
    step.store.close()
    assert restarted(spec, tmp_path).store.open(PARTITIONS[0]) is None


def test_serving_keys_from_the_database_leaves_the_cache_as_it_was(tmp_path):
    spec = spec_with(10_000, 10**9, 4)
    step = rocks_step(spec, tmp_path, 20, live=True)
    keys = [b"key-%d" % i for i in range(200)]
    for lo in range(0, 200, 10):
        _, update = step.compute(
            [PARTITIONS[0]] * 10, keys[lo : lo + 10], np.full(10, 5), np.ones((10, 2), np.float32), np.arange(10)
        )
        step.apply(update)
        commit(step, [lo])
    cached = dict(step.store.tables[PARTITIONS[0]])
    for key in keys:
        state = step.store.peek(PARTITIONS[0], key)
        assert state is not None and state.length == 1 and state.times[-1] == 5
    assert step.store.tables[PARTITIONS[0]] == cached
    assert step.store.peek(PARTITIONS[0], b"never") is None
    step.store.close()


def test_a_key_forgotten_since_the_last_commit_is_not_read_back_from_the_database(tmp_path):
    spec = spec_with(10_000, 5_000, 4)
    step = rocks_step(spec, tmp_path, 10, live=True)
    _, update = step.compute([PARTITIONS[0]], [b"old"], np.array([1_000]), np.ones((1, 2), np.float32), np.array([0]))
    step.apply(update)
    commit(step, [0])
    _, update = step.compute([PARTITIONS[0]], [b"new"], np.array([90_000]), np.ones((1, 2), np.float32), np.array([1]))
    step.apply(update)
    step.sweep(PARTITIONS[0])  # "old" is forgotten: its tombstone goes with the next commit
    assert step.store.peek(PARTITIONS[0], b"old") is None
    step.store.close()


async def test_a_worker_waits_for_another_process_to_let_go_without_blocking_its_loop(tmp_path, monkeypatch):
    import asyncio

    monkeypatch.setattr(local_db, "LOCK_WAIT_S", 30)
    spec = spec_with(10_000, 5_000, 4)
    holder = hold_database(tmp_path / "t-0", 0.5)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.create_task(tick())
    other = local_db.PartitionDatabases(tmp_path, spec.layout_id)
    await other.acquire(PARTITIONS[0])  # the holder lets go after 0.5 s
    ticker.cancel()
    holder.communicate()
    assert ticks >= 5
    assert other.get(PARTITIONS[0]) is not None and not other._private  # the shared one, not a private copy
    other.close()
