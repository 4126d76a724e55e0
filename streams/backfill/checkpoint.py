"""Backfill checkpoints: what a run is and how far it got, in one JSON file per run and
part, inside one folder, named by run ids that are plain names. A checkpoint read back is
checked before it is believed: the file may come from anyone who could write there.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.backfill.replay_plan import ReplayPlan
from streams.errors import CheckpointError
from streams.records import Partition

RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
# What Kafka's protocol holds: partitions are 32-bit, offsets 64-bit (both signed).
MAX_PARTITION = 2**31 - 1
MAX_OFFSET = 2**63 - 1
# A run split over more processes than this (--part K/N) is a mistake, and N names the file.
MAX_PARTS = 10_000


def checkpoint_path(state_dir: Path, run_id: str, part: tuple[int, int]) -> Path:
    """Where run ``run_id``'s process K of N keeps its checkpoint: always inside ``state_dir``."""
    if not RUN_ID.fullmatch(run_id):
        raise CheckpointError(
            f"{run_id!r} is not a plain name: use 1 to 100 letters, digits, '.', '-' or '_', not starting with '.'"
        )
    k, n = part
    return state_dir / f"{run_id}.part{k}of{n}.json"


def _read(path: Path) -> bytes:
    """The checkpoint's bytes, or ``CheckpointError``: at most ``MAX_CHECKPOINT_BYTES`` of a
    regular file (never a FIFO, which would wait for a writer, nor a device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: not readable ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"checkpoint {path}: not a regular file")
        if info.st_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"checkpoint {path}: larger than {MAX_CHECKPOINT_BYTES:,} bytes: not one a run wrote")
        try:
            data = file.read(MAX_CHECKPOINT_BYTES + 1)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {path}: not readable ({exc.strerror})") from None
    if len(data) > MAX_CHECKPOINT_BYTES:  # it grew since
        raise CheckpointError(f"checkpoint {path}: larger than {MAX_CHECKPOINT_BYTES:,} bytes: not one a run wrote")
    return data


def _parse(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:  # also bytes that are not UTF-8, and integers of more than 4,300 digits
        raise CheckpointError(f"checkpoint {path}: not readable as JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {path}: not readable as JSON (nested too deeply)") from None


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
    shadow_sink: dict[str, Any] | None = None

    def save(self) -> None:
        data = {
            "run": self.run,
            "plan": self.plan.to_json(),
            "position": [[tp.topic, tp.partition, at] for tp, at in sorted(self.position.items())],
            "done": self.done,
            "sink": self.sink,
        }
        if self.shadow_sink is not None:  # only a --models run to files has one
            data["shadow_sink"] = self.shadow_sink
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
        data = _parse(path, _read(path))
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
            isinstance(part, list)
            and len(part) == 2
            and all(type(x) is int for x in part)
            and 1 <= part[0] <= part[1] <= MAX_PARTS,
            path,
            "run.part",
            part,
            f"[K, N] with 1 <= K <= N <= {MAX_PARTS:,}",
        )
        models = run.get("models")
        _expect(
            models is None
            or (
                isinstance(models, list)
                and len(models) >= 2
                and all(isinstance(m, str) and m for m in models)
                and len(set(models)) == len(models)
                and models[0] == run.get("model")
            ),
            path,
            "run.models",
            models,
            "null or a list of two or more distinct model references, the first the run's model",
        )
        labels = run.get("labels")
        _expect(
            labels is None or (isinstance(labels, str) and bool(labels)), path, "run.labels", labels, "a string or null"
        )
        emit = run.get("emit_features", False)
        _expect(type(emit) is bool, path, "run.emit_features", emit, "true or false")
        try:
            plan = ReplayPlan.from_json(data["plan"])
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: key 'plan': {exc}") from None
        for planned in plan.end:  # what a consumer can be asked for: a topic name, 32-bit partitions, 64-bit offsets
            ok = TOPIC.fullmatch(planned.topic) is not None and planned.partition <= MAX_PARTITION
            ok = ok and plan.end[planned] <= MAX_OFFSET
            shown = [planned.topic, planned.partition, plan.start[planned], plan.end[planned]]
            _expect(ok, path, "plan.partitions", shown, "[topic, partition, start, end] that Kafka can hold")
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
        shadow_sink = data.get("shadow_sink")
        _expect(
            shadow_sink is None or isinstance(shadow_sink, dict), path, "shadow_sink", shadow_sink, "an object or null"
        )
        return cls(path, run, plan, position, data["done"], sink, shadow_sink)
