"""Changing a running pipeline's models (streams.flow.role_changes): a promotion waits for the batch
being scored, then every later batch is scored by the new champion alone, no batch by a mix."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from streams.flow.canary import Canary
from streams.flow.cost_model import CostModel
from streams.flow.role_changes import Retired, RoleChange, change_roles
from streams.flow.roles import Roles
from streams.flow.scored_groups import ScoredGroup
from streams.testing import CollectingSink
from tests.fakes import GatedRunner, SumRunner, until
from tests.unit.test_driver import make_driver
from tests.unit.test_roles import events
from tests.unit.test_shadow import shadow_of


class Canary2(GatedRunner):
    name, version = "sum", "c2"


class Promoted(SumRunner):
    name, version = "sum", "c2-promoted"


async def test_promoting_the_canary_waits_for_the_batch_in_flight_and_no_batch_is_scored_by_a_mix():
    canary = Canary2()
    driver, sink, progress, _ = make_driver(events(48), live=True, max_batch_size=16)
    driver.pipeline.roles.use_canary(Canary(canary, 1.0))  # every key: the first batch waits in it
    running = asyncio.create_task(driver.run())
    await asyncio.wait_for(canary.entered.wait(), 10)

    new, cost = Promoted(), CostModel()
    changing = asyncio.create_task(change_roles(driver, RoleChange((new, cost), stop_canary=True)))
    await asyncio.sleep(0.01)
    assert not changing.done(), "between two batches only"
    canary.gate.set()
    retired = await asyncio.wait_for(changing, 10)
    assert retired.canary is canary and retired.champion is not None and retired.champion.version == "1"
    roles: Roles = driver.pipeline.roles
    assert (roles.champion, roles.canary, roles.rolled_back) == (new, None, None), "promoted, not rolled back"
    assert driver.batcher.cost is cost and driver.metrics.model_swaps == 1

    await until(lambda: len(progress.acknowledged_offsets) == 48, "every event acknowledged")
    driver.stop()
    await asyncio.wait_for(running, 10)
    bodies = [orjson.loads(r.value) for r in sink.records if r.topic == "out"]
    assert sorted(b["id"] for b in bodies) == list(range(48)), "one output per event"
    labels = [(b["model_version"], b.get("role")) for b in bodies]
    first = labels[: labels.index(("c2-promoted", None))]
    assert first and set(first) == {("c2", "canary")}, "the batch in flight: the canary's, labelled so"
    assert set(labels[len(first) :]) == {("c2-promoted", None)}, "after it, the champion alone"


async def test_a_roll_back_says_why_and_letting_a_shadow_go_is_idempotent():
    driver, _, _, _ = make_driver([], live=True)
    driver.pipeline.roles.use_canary(Canary(SumRunner(), 0.5))
    retired = await change_roles(driver, RoleChange(stop_canary=True, rollback_reason="failed 3 of 3 batches"))
    assert retired.champion is None and retired.canary is not None
    assert driver.pipeline.roles.rolled_back == "failed 3 of 3 batches"
    again = await change_roles(driver, RoleChange(stop_canary=True, rollback_reason="again"))
    assert again.canary is None and driver.pipeline.roles.rolled_back == "failed 3 of 3 batches"


async def test_a_hung_shadow_taken_out_of_service_holds_whoever_retires_it_for_a_bounded_time():
    hung = GatedRunner()  # never released: a model that hangs
    shadow = shadow_of(hung, CollectingSink())
    await shadow.offer(ScoredGroup(*offered_batch()))
    await asyncio.wait_for(hung.entered.wait(), 10)
    retired = Retired(shadows=[shadow])
    await asyncio.wait_for(retired.aclose(drain_within_s=0.01), 10)  # returns, the batch dropped
    hung.gate.set()


def offered_batch():
    records = events(2)
    rows = np.arange(2)
    return records, rows, [0, 1], [np.ones((2, 2), dtype=np.float32)], np.zeros(2, dtype=np.float32), "m", "1"
