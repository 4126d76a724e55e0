"""A partition's life on a worker: assigned -> restoring -> running -> revoking -> closed.

The group coordinator decides which partitions a worker owns; this is what the worker does with
each, in one checked order (as Kafka Streams' ``Task``: CREATED -> RESTORING -> RUNNING ->
SUSPENDED -> CLOSED). Each step is a part of the pipeline, handed in by whoever builds it:

- assigned: ``fence`` takes the partitions over from their previous owner (a transactional
  producer per partition fences the old one's);
- restoring: ``restore`` rebuilds their keys' state (the changelog, then a warm-up from the input);
- running: ``start`` reads them from their committed offsets;
- revoking: ``drain`` gives back their unscored events, finishes and commits the rest;
- closed: ``release`` lets go of what holds them (their transactions, their state), in order,
  even when draining failed.

A move out of this order raises ``PartitionOutOfOrder``. A closed partition may be assigned again
(a later rebalance gives it back): that is a new life. A step that fails while partitions are
assigned is handed to ``fail`` (the driver stops on it): raised inside the consumer's rebalance
listener, it would be logged and lost.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from streams.errors import PartitionOutOfOrder
from streams.records import Partition

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    ASSIGNED = "assigned"
    RESTORING = "restoring"
    RUNNING = "running"
    REVOKING = "revoking"
    CLOSED = "closed"


# Where each phase may go next; ``None``: a partition this worker has not seen yet.
NEXT: dict[Phase | None, frozenset[Phase]] = {
    None: frozenset({Phase.ASSIGNED}),
    Phase.ASSIGNED: frozenset({Phase.RESTORING, Phase.REVOKING}),
    Phase.RESTORING: frozenset({Phase.RUNNING, Phase.REVOKING}),
    Phase.RUNNING: frozenset({Phase.REVOKING}),
    Phase.REVOKING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.ASSIGNED}),
}

Step = Callable[[set[Partition]], Awaitable[None]]


@dataclass(frozen=True)
class PartitionSteps:
    """What a pipeline does at each step of its partitions' life; a step it has no part in is left out."""

    fence: Step | None = None
    restore: Step | None = None
    start: Step | None = None
    drain: Step | None = None
    release: tuple[Step, ...] = ()


class PartitionLife:
    """The phase of each partition a worker was given, moved only in order (see the module's docstring)."""

    def __init__(self, steps: PartitionSteps, *, fail: Callable[[BaseException], None] | None = None) -> None:
        self.steps = steps
        self.fail = fail
        self._phases: dict[Partition, Phase] = {}

    def phase(self, partition: Partition) -> Phase | None:
        return self._phases.get(partition)

    def in_phase(self, phase: Phase) -> set[Partition]:
        return {p for p, now in self._phases.items() if now is phase}

    async def assign(self, partitions: set[Partition]) -> None:
        """Take ``partitions`` from assigned to running: fence, restore, start reading."""
        try:
            self._move(partitions, Phase.ASSIGNED)
            if self.steps.fence is not None:
                await self.steps.fence(partitions)
            self._move(partitions, Phase.RESTORING)
            if self.steps.restore is not None:
                await self.steps.restore(partitions)
        except Exception as exc:  # handed to whoever stops the driver
            if self.fail is None:
                raise
            self.fail(exc)
            return  # they stay where they failed, never scored, until revoked
        if self.steps.start is not None:
            await self.steps.start(partitions)
        self._move(partitions, Phase.RUNNING)

    async def revoke(self, partitions: set[Partition]) -> None:
        """Take ``partitions`` to closed: drain (give back, finish, commit), then release them.
        Partitions this worker does not hold (never assigned, or closed already) are passed over."""
        held = {p for p in partitions if self._phases.get(p) not in (None, Phase.CLOSED)}
        self._move(held, Phase.REVOKING)
        try:
            if self.steps.drain is not None:
                await self.steps.drain(partitions)
        finally:
            try:
                for release in self.steps.release:
                    await release(held)
            finally:
                self._move(held, Phase.CLOSED)

    async def close(self) -> None:
        """The worker stops (its driver has committed what it finished): release every partition still held."""
        held = {p for p, now in self._phases.items() if now is not Phase.CLOSED}
        self._move(held, Phase.REVOKING)
        try:
            for release in self.steps.release:
                await release(held)
        finally:
            self._move(held, Phase.CLOSED)

    def _move(self, partitions: Iterable[Partition], to: Phase) -> None:
        partitions = sorted(partitions)
        wrong = [p for p in partitions if to not in NEXT[self._phases.get(p)]]
        if wrong:
            names = ", ".join(f"{p.topic}[{p.partition}] ({_name(self._phases.get(p))})" for p in wrong)
            raise PartitionOutOfOrder(f"cannot move {names} to {to.value}")
        for p in partitions:
            self._phases[p] = to
        if partitions:
            log.debug("partitions %s: %s", ", ".join(f"{p.topic}[{p.partition}]" for p in partitions), to.value)


def _name(phase: Phase | None) -> str:
    return "not assigned" if phase is None else phase.value
