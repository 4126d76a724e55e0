"""Run ids and checkpoint files: a checkpoint stays inside its folder, and one read back is checked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from streams.backfill.checkpoint import MAX_CHECKPOINT_BYTES, Checkpoint, checkpoint_path
from streams.backfill.replay_plan import ReplayPlan
from streams.errors import CheckpointError
from streams.records import Partition


@pytest.mark.parametrize("run_id", ["fraud-20261128-151421-491b4e", "a", "v1.2_b-3", "x" * 100])
def test_plain_run_ids_name_a_file_in_the_state_folder(tmp_path, run_id):
    assert checkpoint_path(tmp_path, run_id, (2, 3)) == tmp_path / f"{run_id}.part2of3.json"


@pytest.mark.parametrize(
    "run_id", ["../../x", "/abs", "a/b", "a\\b", ".hidden", "..", "", "x" * 101, "sp ace", "é", "a\nb", "nul\0"]
)
def test_run_ids_that_are_not_plain_names_are_refused(tmp_path, run_id):
    with pytest.raises(CheckpointError, match="is not a plain name"):
        checkpoint_path(tmp_path, run_id, (1, 1))


def saved(tmp_path: Path) -> Path:
    tp = Partition("in", 0)
    checkpoint = Checkpoint(
        tmp_path / "r.part1of1.json",
        {"id": "r", "pipeline": "p", "model": None, "sink": "kafka:out", "part": [1, 1]},
        ReplayPlan({tp: 0}, {tp: 10}),
        {tp: 4},
    )
    checkpoint.save()
    return checkpoint.path


def test_a_checkpoint_reads_back_as_saved(tmp_path):
    loaded = Checkpoint.load(saved(tmp_path))
    assert loaded.position == {Partition("in", 0): 4}
    assert loaded.plan.remaining(loaded.position) == 6
    assert not loaded.done
    assert loaded.sink is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("plan"), "key 'plan' has value None: expected present"),
        (lambda d: d["run"].update(pipeline=7), "key 'run.pipeline' has value 7: expected a string"),
        (lambda d: d["run"].update(model=["x"]), "key 'run.model'"),
        (lambda d: d["run"].update(part=[3, 2]), "key 'run.part'"),
        (lambda d: d["run"].update(part=[True, 1]), "key 'run.part'"),
        (lambda d: d["plan"]["partitions"][0].__setitem__(2, 11), "key 'plan': partition"),
        (lambda d: d["plan"]["partitions"].append(["in", 0, 0, 1]), "appears twice"),
        (lambda d: d.update(position=[["in", 0, 11]]), "inside the plan"),
        (lambda d: d.update(position=[["other", 0, 1]]), "inside the plan"),
        (lambda d: d.update(position=[["in", "0", 1]]), "inside the plan"),
        (lambda d: d.update(done="yes"), "key 'done'"),
        (lambda d: d.update(sink="file:x"), "key 'sink'"),
    ],
)
def test_a_checkpoint_that_is_not_what_a_run_wrote_is_refused_with_the_key(tmp_path, change, message):
    path = saved(tmp_path)
    data: dict[str, Any] = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message) as raised:
        Checkpoint.load(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("content", [b"", b"{not json", b"[]", b"\xff\xfe"])
def test_a_checkpoint_that_is_not_json_is_refused(tmp_path, content):
    path = tmp_path / "r.part1of1.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}"):
        Checkpoint.load(path)


def test_a_checkpoint_nested_too_deeply_is_refused_not_a_recursion_error(tmp_path):
    path = tmp_path / "r.part1of1.json"
    path.write_bytes(b"[" * 200_000)
    with pytest.raises(CheckpointError) as raised:
        Checkpoint.load(path)
    assert str(raised.value) == f"checkpoint {path}: not readable as JSON (nested too deeply)"


def test_a_checkpoint_larger_than_any_run_writes_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "r.part1of1.json"
    with path.open("wb") as file:
        file.truncate(MAX_CHECKPOINT_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(CheckpointError) as raised:
        Checkpoint.load(path)
    assert str(raised.value) == f"checkpoint {path}: larger than {MAX_CHECKPOINT_BYTES:,} bytes: not one a run wrote"


def test_a_checkpoint_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path):
    path = tmp_path / "r.part1of1.json"
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    with pytest.raises(CheckpointError, match=f"checkpoint {path}: not a regular file"):
        Checkpoint.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["plan"]["partitions"][0].__setitem__(1, 2**31),
            "key 'plan.partitions' has value ['in', 2147483648",
        ),
        (lambda d: d["plan"]["partitions"][0].__setitem__(3, 2**63), "key 'plan.partitions' has value ['in', 0, 0, 9"),
        (lambda d: d["plan"]["partitions"][0].__setitem__(0, "a/b"), "key 'plan.partitions' has value ['a/b'"),
        (lambda d: d["run"].update(emit_features="yes"), "key 'run.emit_features' has value 'yes': expected true"),
        (lambda d: d["run"].update(part=[1, 10**30]), "key 'run.part'"),
    ],
)
def test_a_plan_or_run_a_consumer_could_not_take_is_refused_with_the_key(tmp_path, change, message):
    path = saved(tmp_path)
    data: dict[str, Any] = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as raised:
        Checkpoint.load(path)
    assert str(raised.value).startswith(f"checkpoint {path}: {message}")
    assert "\n" not in str(raised.value)
