"""Backfill checkpoints: what a run is and how far it got, in one JSON file per run and
part, inside one folder, named by run ids that are plain names. A checkpoint read back is
checked before it is believed: the file may come from anyone who could write there.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import CheckpointError
from streams.records import Partition
from streams.replay_plan import ReplayPlan

RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024


def checkpoint_path(state_dir: Path, run_id: str, part: tuple[int, int]) -> Path:
    """Where run ``run_id``'s process K of N keeps its checkpoint: always inside ``state_dir``."""
    if not RUN_ID.fullmatch(run_id):
        raise CheckpointError(
            f"{run_id!r} is not a plain name: use 1 to 100 letters, digits, '.', '-' or '_', not starting with '.'"
        )
    k, n = part
    return state_dir / f"{run_id}.part{k}of{n}.json"


def _expect(ok: bool, path: Path, key: str, value: object, expected: str) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise CheckpointError(f"checkpoint {path}: key {key!r} has value {shown}: expected {expected}")


@dataclass
class Checkpoint:
    """What a run is and how far it got; written atomically as JSON.

    ``sink`` is what the sink needs to resume exactly where the checkpoint counts (a file
    sink's lengths and closed parts; nothing for Kafka)."""

    path: Path
    run: dict[str, Any]
    plan: ReplayPlan
    position: dict[Partition, int] = field(default_factory=dict)
    done: bool = False
    sink: dict[str, Any] | None = None

    def save(self) -> None:
        data = {
            "run": self.run,
            "plan": self.plan.to_json(),
            "position": [[tp.topic, tp.partition, at] for tp, at in sorted(self.position.items())],
            "done": self.done,
            "sink": self.sink,
        }
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as file:
            json.dump(data, file, indent=1)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read and check a checkpoint: its shape and types, and positions inside its plan.

        What the run names (pipeline, model, sink) is the caller's to check, with the rules it
        applies to the command line: the file may come from anyone who could write there."""
        try:
            if path.stat().st_size > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"checkpoint {path}: larger than {MAX_CHECKPOINT_BYTES} bytes")
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: not readable as JSON ({exc})") from None
        _expect(isinstance(data, dict), path, "", type(data).__name__, "an object")
        for key in ("run", "plan", "position", "done"):
            _expect(key in data, path, key, None, "present")
        run = data["run"]
        _expect(isinstance(run, dict), path, "run", run, "an object")
        for key in ("id", "pipeline", "sink"):
            _expect(isinstance(run.get(key), str) and bool(run[key]), path, f"run.{key}", run.get(key), "a string")
        _expect(
            run.get("model") is None or isinstance(run["model"], str),
            path,
            "run.model",
            run.get("model"),
            "a string or null",
        )
        part = run.get("part")
        _expect(
            isinstance(part, list) and len(part) == 2 and all(type(x) is int for x in part) and 1 <= part[0] <= part[1],
            path,
            "run.part",
            part,
            "[K, N] with 1 <= K <= N",
        )
        try:
            plan = ReplayPlan.from_json(data["plan"])
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: key 'plan': {exc}") from None
        position: dict[Partition, int] = {}
        entries = data["position"]
        _expect(isinstance(entries, list), path, "position", entries, "a list")
        for entry in entries:
            ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
            ok = ok and type(entry[1]) is int and type(entry[2]) is int
            tp = Partition(entry[0], entry[1]) if ok else None
            ok = ok and tp in plan.end and plan.start[tp] <= entry[2] <= plan.end[tp]
            _expect(ok, path, "position", entry, "[topic, partition, offset] inside the plan")
            if tp is not None:  # always, past _expect
                position[tp] = entry[2]
        _expect(type(data["done"]) is bool, path, "done", data["done"], "true or false")
        sink = data.get("sink")
        _expect(sink is None or isinstance(sink, dict), path, "sink", sink, "an object or null")
        return cls(path, run, plan, position, data["done"], sink)
