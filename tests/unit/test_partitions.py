"""A partition's life: its steps in order, checked moves, failures handed on; with fakes, no Kafka."""

from __future__ import annotations

import pytest

from streams.errors import PartitionOutOfOrder, StateError
from streams.flow.partitions import PartitionLife, PartitionSteps, Phase
from streams.records import Partition

A, B = Partition("in", 0), Partition("in", 1)


def recording_life(calls: list[tuple[str, list[Partition]]], *, fail=None, restore_raises=None) -> PartitionLife:
    def step(name: str):
        async def run(partitions: set[Partition]) -> None:
            calls.append((name, sorted(partitions)))
            if name == "restore" and restore_raises is not None:
                raise restore_raises

        return run

    steps = PartitionSteps(
        fence=step("fence"),
        restore=step("restore"),
        start=step("start"),
        drain=step("drain"),
        release=(step("release transactions"), step("release state")),
    )
    return PartitionLife(steps, fail=fail)


async def test_a_partition_goes_through_its_life_in_order_and_may_come_back_later():
    calls: list[tuple[str, list[Partition]]] = []
    life = recording_life(calls)
    await life.assign({A, B})
    assert life.phase(A) is Phase.RUNNING and life.in_phase(Phase.RUNNING) == {A, B}
    await life.revoke({A})
    assert life.phase(A) is Phase.CLOSED and life.phase(B) is Phase.RUNNING
    await life.assign({A})  # a later rebalance gives it back: a new life
    assert [name for name, _ in calls] == [
        "fence", "restore", "start", "drain", "release transactions", "release state", "fence", "restore", "start"
    ]  # fmt: skip
    assert life.phase(A) is Phase.RUNNING


async def test_assigning_a_partition_already_held_raises_instead_of_restoring_over_its_state():
    life = recording_life([])
    await life.assign({A})
    with pytest.raises(PartitionOutOfOrder, match=r"cannot move in\[0\] \(running\) to assigned"):
        await life.assign({A})


async def test_revoking_what_was_never_assigned_drains_but_releases_nothing():
    calls: list[tuple[str, list[Partition]]] = []
    life = recording_life(calls)
    await life.revoke({A})
    assert calls == [("drain", [A]), ("release transactions", []), ("release state", [])]
    assert life.phase(A) is None


async def test_a_failed_restore_is_handed_to_the_driver_and_the_partition_is_never_started():
    calls: list[tuple[str, list[Partition]]] = []
    failures: list[BaseException] = []
    life = recording_life(calls, fail=failures.append, restore_raises=StateError("another features config"))
    await life.assign({A})
    assert [str(f) for f in failures] == ["another features config"]
    assert [name for name, _ in calls] == ["fence", "restore"], "not started: nothing of it is scored"
    assert life.phase(A) is Phase.RESTORING
    await life.revoke({A})
    assert life.phase(A) is Phase.CLOSED


async def test_a_failed_drain_still_releases_and_closes_the_partitions():
    calls: list[tuple[str, list[Partition]]] = []

    async def broken_drain(partitions: set[Partition]) -> None:
        raise RuntimeError("commit failed")

    async def release(partitions: set[Partition]) -> None:
        calls.append(("release", sorted(partitions)))

    life = PartitionLife(PartitionSteps(drain=broken_drain, release=(release,)))
    await life.assign({A})
    with pytest.raises(RuntimeError, match="commit failed"):
        await life.revoke({A})
    assert calls == [("release", [A])] and life.phase(A) is Phase.CLOSED


async def test_closing_the_worker_releases_every_partition_still_held():
    calls: list[tuple[str, list[Partition]]] = []
    life = recording_life(calls)
    await life.assign({A, B})
    await life.revoke({B})
    calls.clear()
    await life.close()
    assert calls == [("release transactions", [A]), ("release state", [A])]
    assert life.in_phase(Phase.CLOSED) == {A, B}


async def test_an_assignment_out_of_order_is_handed_to_the_driver_inside_a_rebalance_listener():
    calls: list[tuple[str, list[Partition]]] = []
    failures: list[BaseException] = []
    life = recording_life(calls, fail=failures.append)
    await life.assign({A})
    await life.assign({A})  # the consumer's listener would only log a raise: the driver stops instead
    assert [type(f) for f in failures] == [PartitionOutOfOrder]
    assert [name for name, _ in calls] == ["fence", "restore", "start"], "nothing done to the held partition"
    assert life.phase(A) is Phase.RUNNING
