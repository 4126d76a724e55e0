"""What a bounded replay covers: per partition, the first offset to read and the end offset
snapshotted when the run began. Saved in a backfill's checkpoint, so a resumed run covers
exactly what it started to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streams.records import Partition


@dataclass(frozen=True)
class ReplayPlan:
    """Per partition: the first offset to read and the end offset snapshotted at start."""

    start: dict[Partition, int]
    end: dict[Partition, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.end)

    def remaining(self, position: Mapping[Partition, int]) -> int:
        return sum(max(0, self.end[tp] - position.get(tp, self.start[tp])) for tp in self.end)

    def to_json(self) -> dict[str, list[list[object]]]:
        return {
            "partitions": [[tp.topic, tp.partition, self.start[tp], self.end[tp]] for tp in sorted(self.end)],
        }

    @classmethod
    def from_json(cls, data: object) -> ReplayPlan:
        """The plan ``to_json`` wrote; ``ValueError`` saying what is wrong with anything else."""
        entries = data.get("partitions") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError("expected an object with a list 'partitions'")
        start, end = {}, {}
        for entry in entries:
            if not (
                isinstance(entry, list)
                and len(entry) == 4
                and isinstance(entry[0], str)
                and entry[0]
                and all(type(x) is int and x >= 0 for x in entry[1:])
                and entry[2] <= entry[3]
            ):
                raise ValueError(f"partition {entry!r}: expected [topic, partition, start, end] with 0 <= start <= end")
            tp = Partition(entry[0], entry[1])
            if tp in end:
                raise ValueError(f"partition {entry[0]}[{entry[1]}] appears twice")
            start[tp], end[tp] = entry[2], entry[3]
        return cls(start, end)
