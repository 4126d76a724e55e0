"""How long the broker may hold a fetch, set by what the last poll brought.

Kafka's fetch has two knobs: answer once ``fetch_min_bytes`` are in, or after
``fetch_max_wait_ms``. Answered as soon as anything arrived, a busy worker ran a fetch and
a turn of its loop per few arriving events (80% of a core at 2,500 demo events/s); held
for 64 KiB up to a few milliseconds, an idle worker asked the broker 200 times a second
(8-10% of a core doing nothing). So the source paces by what it sees: while polls bring
records, fetches wait for a fuller answer; after a poll that brought none, they go back to
answering at once and waiting long only while nothing comes, so the first event after a
quiet spell is not held either.

aiokafka reads both knobs from its fetcher each time it builds a request; it has no public
way to change them on a running consumer, so this sets the fetcher's attributes (aiokafka
is pinned; without them, the consumer keeps what it was made with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer


@dataclass(frozen=True)
class FetchPacing:
    busy_min_bytes: int
    busy_wait_ms: int
    idle_wait_ms: int

    def idle_settings(self) -> dict[str, int]:
        """What the consumer starts with: nothing has arrived yet."""
        return {"fetch_min_bytes": 1, "fetch_max_wait_ms": self.idle_wait_ms}

    def apply(self, consumer: AIOKafkaConsumer, busy: bool) -> None:
        fetcher: Any = getattr(consumer, "_fetcher", None)
        if fetcher is None or not hasattr(fetcher, "_fetch_min_bytes") or not hasattr(fetcher, "_fetch_max_wait_ms"):
            return
        fetcher._fetch_min_bytes = self.busy_min_bytes if busy else 1
        fetcher._fetch_max_wait_ms = self.busy_wait_ms if busy else self.idle_wait_ms
