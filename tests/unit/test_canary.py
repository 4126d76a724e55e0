"""The canary (streams.flow.canary): a sticky, deterministic share of keys, and what its events
become through the roles and a real Pipeline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from streams.errors import ModelUnavailableError
from streams.flow.breaker import BreakerPolicy
from streams.flow.canary import Canary, key_share, routing_key
from streams.flow.roles import ConstantRunner, Roles
from streams.records import InputRecord
from tests.fakes import SumRunner
from tests.unit.test_roles import PLAIN_FIELDS, TINY_S, Champion, FakeClock, Hangs, events, key_of, make_pipeline


class Candidate(SumRunner):
    """The canary: the sum plus 1000, so its outputs are told apart from the champion's."""

    name = "cand"
    version = "2"

    def __init__(self, *, failing: bool = False) -> None:
        super().__init__()
        self.failing = failing

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.batches.append(int(inputs[0].shape[0]))
        if self.failing:
            raise ModelUnavailableError("canary device lost")
        return inputs[0].sum(axis=1) + 1000


def record(key: bytes | None, offset: int = 0) -> InputRecord:
    return InputRecord("in", 0, offset, 0, key, b"{}")


def selected(canary: Canary, keys: Sequence[bytes]) -> np.ndarray:
    records = [record(k, i) for i, k in enumerate(keys)]
    return canary.selects(records, np.arange(len(records)), list(range(len(records))))


def test_key_share_is_the_same_in_every_process():
    """BLAKE2b of the salted key, never Python's per-process hash: fixed values, computed once."""
    assert key_share(b"user-1") == 0.5977964542927665
    assert key_share(b"user-2") == 0.5249795362305915
    assert key_share(b"tx-42") == 0.8518163580972532
    assert key_share(b"") == 0.5172840253669911
    assert key_share("café".encode()) == 0.8641113254329286


def test_the_share_of_keys_selected_is_within_the_binomial_bound():
    n, fraction = 10_000, 0.1
    keys = [f"customer-{i}".encode() for i in range(n)]
    chosen = int(selected(Canary(SumRunner(), fraction), keys).sum())
    sd = math.sqrt(n * fraction * (1 - fraction))
    assert abs(chosen - n * fraction) <= 4 * sd, chosen
    # and the hash spreads keys evenly over [0, 1): every tenth holds its share
    deciles = np.bincount((np.array([key_share(k) for k in keys]) * 10).astype(int), minlength=10)
    assert deciles.size == 10 and all(abs(d - 1_000) <= 4 * sd for d in deciles), deciles


def test_a_key_meets_the_same_model_whatever_its_batch_and_whichever_canary_instance():
    keys = [f"k{i}".encode() for i in range(500)]
    first = dict(zip(keys, selected(Canary(SumRunner(), 0.3), keys).tolist(), strict=True))
    rng = np.random.default_rng(7)
    for _ in range(5):
        shuffled = [keys[i] for i in rng.permutation(len(keys))[:137]]
        again = selected(Canary(SumRunner(), 0.3), shuffled)
        assert again.tolist() == [first[k] for k in shuffled]


def test_an_unkeyed_record_routes_by_its_event_id_and_a_keyed_one_by_its_key():
    assert routing_key(record(None), "tx-42") == b"tx-42"
    assert routing_key(record(None), 42) == b"42"
    assert routing_key(record(b"user-1"), "tx-42") == b"user-1"
    canary = Canary(SumRunner(), 0.6)
    records = [record(None, 0), record(None, 1), record(b"user-2", 2), record(b"user-2", 3)]
    ids = ["tx-42", 42, "tx-42", "anything else"]
    # tx-42: 0.85 (champion), 42: 0.44 (canary), user-2: 0.52 (canary) whatever the event's id
    assert canary.selects(records, np.arange(4), ids).tolist() == [False, True, True, True]


def test_raising_the_fraction_only_adds_keys():
    keys = [f"acct-{i}".encode() for i in range(5_000)]
    previous = np.zeros(len(keys), dtype=bool)
    for fraction in (0.01, 0.05, 0.2, 0.5, 0.99):
        now = selected(Canary(SumRunner(), fraction), keys)
        assert not (previous & ~now).any(), f"a key left the canary when the fraction rose to {fraction}"
        assert now.sum() > previous.sum()
        previous = now


def test_fraction_zero_selects_nothing_and_one_everything():
    keys = [f"k{i}".encode() for i in range(200)]
    assert not selected(Canary(SumRunner(), 0.0), keys).any()
    assert selected(Canary(SumRunner(), 1.0), keys).all()
    assert selected(Canary(SumRunner(), 1.0), [b"tx-42"]).tolist() == [True]  # 0.85 of the way: still in


async def test_canary_outputs_carry_its_version_and_role_and_the_champions_are_as_before():
    candidate = Candidate()
    pipeline, sink = make_pipeline(Roles(Champion(), canary=Canary(candidate, 0.5)))
    await pipeline.process(events(40))
    out = {o["id"]: o for o in sink.decoded("out")}
    assert sorted(out) == list(range(40)), "exactly one output per event"
    on_canary = {i for i in range(40) if key_share(key_of(i)) < 0.5}
    assert 0 < len(on_canary) < 40
    for i, o in out.items():
        if i in on_canary:
            assert (o["model"], o["model_version"], o["role"], o["prediction"]) == ("cand", "2", "canary", i + 1001)
        else:
            assert set(o) == PLAIN_FIELDS and (o["model"], o["prediction"]) == ("champ", i + 1)
    assert candidate.batches == [len(on_canary)], "the canary's keys in one call"


async def test_a_canary_failing_a_whole_batch_gives_its_events_to_the_champion():
    candidate = Candidate(failing=True)
    roles = Roles(Champion(), canary=Canary(candidate, 0.5))
    pipeline, sink = make_pipeline(roles)
    outcome = await pipeline.process(events(40))
    assert (outcome.scored, outcome.dead_lettered) == (40, 0)
    out = sink.decoded("out")
    assert sorted(o["id"] for o in out) == list(range(40))
    assert all(set(o) == PLAIN_FIELDS and o["model"] == "champ" for o in out)
    stats = roles.book.of("canary", "cand", "2")
    assert (stats.errors, stats.timeouts, stats.batches) == (1, 0, 0)
    assert roles.canary is not None, "one failure breaks no limit: it stays"


async def test_a_hung_canary_times_out_and_the_champion_scores_its_events():
    class HungCandidate(Hangs):
        name, version = "cand", "2"

    candidate = HungCandidate()
    roles = Roles(Champion(), canary=Canary(candidate, 0.5), policy=BreakerPolicy(timeout_s=TINY_S))
    pipeline, sink = make_pipeline(roles)
    await pipeline.process(events(20))
    assert sorted(o["id"] for o in sink.decoded("out")) == list(range(20))
    assert all(o["model"] == "champ" for o in sink.decoded("out"))
    assert roles.book.of("canary", "cand", "2").timeouts == 1
    candidate.release.set()


async def test_canary_events_the_champion_cannot_score_go_to_the_fallback():
    clock = FakeClock()
    roles = Roles(
        Champion(failing=True),
        canary=Canary(Candidate(failing=True), 0.5),
        fallback=ConstantRunner(0.0),
        policy=BreakerPolicy(failures=5),
        clock=clock,
    )
    pipeline, sink = make_pipeline(roles)
    await pipeline.process(events(20))
    out = sink.decoded("out")
    assert sorted(o["id"] for o in out) == list(range(20))
    assert all(o["role"] == "fallback" for o in out)


async def test_every_event_of_a_key_goes_to_one_model_in_offset_order_batch_after_batch():
    keys = [f"user-{k}".encode() for k in range(10)]
    pipeline, sink = make_pipeline(Roles(Champion(), canary=Canary(Candidate(), 0.5)))
    # Each key's events interleaved with the others', over three batches.
    for b in range(3):
        await pipeline.process(events(30, start=30 * b, key=lambda i: keys[i % 10]))
    by_key: dict[bytes, list[tuple[int, str]]] = {}
    for output in sink.on("out"):
        body = orjson.loads(output.value)
        by_key.setdefault(output.key, []).append((body["source"]["offset"], body["model"]))
    assert sorted(by_key) == sorted(keys)
    for key, seen in by_key.items():
        assert [offset for offset, _ in seen] == sorted(offset for offset, _ in seen), "per-key order kept"
        assert {model for _, model in seen} == {"cand" if key_share(key) < 0.5 else "champ"}, "never switches"
    assert {model for seen in by_key.values() for _, model in seen} == {"cand", "champ"}


@pytest.mark.parametrize("key_by_position", [False, True])
async def test_live_and_backfill_send_the_same_keys_to_the_canary(key_by_position):
    """The backfill keys its outputs by position; the routing still follows the record key."""
    pipeline, sink = make_pipeline(Roles(Champion(), canary=Canary(Candidate(), 0.3)), key_by_position=key_by_position)
    await pipeline.process(events(50, key=lambda i: f"user-{i % 7}".encode()))
    models = {o["id"]: o["model"] for o in sink.decoded("out")}
    assert models == {i: "cand" if key_share(f"user-{i % 7}".encode()) < 0.3 else "champ" for i in range(50)}
