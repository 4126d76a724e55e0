from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

from streams.backfill.file_sink import FileSink, FileState, check_resume, check_target
from streams.codecs.codec import EventSchema, TensorField
from streams.errors import FileSinkError
from streams.flow.pipeline import Pipeline
from streams.records import InputRecord, OutputRecord
from tests.fakes import SumRunner

SCHEMA = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))


def batch() -> list[InputRecord]:
    good = [InputRecord("in", 1, i, 1_000, b"k", orjson.dumps({"id": f"e{i}", "x": [i, 1]})) for i in range(3)]
    return [*good, InputRecord("in", 1, 3, 1_000, b"k", b"broken")]


class TwoOutputs:
    """A model with two outputs per event: the row sum and the row's first value."""

    name = "two"
    version = "1"

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        x = inputs[0].reshape(inputs[0].shape[0], -1)
        return np.stack([x.sum(axis=1), x[:, 0]], axis=1)

    async def aclose(self) -> None:
        pass


def pipeline_for(sink: FileSink, runner: Any = None) -> Pipeline:
    return Pipeline(
        name="p",
        schema=SCHEMA,
        runner=runner or SumRunner(),
        sink=sink,
        topics=sink.topics,
        key_by_position=True,
    )


def read_parquet(folder: Path) -> list[dict[str, Any]]:
    table = pq.read_table(folder).to_pydict()
    return [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
async def test_predictions_go_to_the_file_and_dead_letters_beside_it(tmp_path, suffix):
    path = tmp_path / f"scores{suffix}"
    sink = FileSink(path)
    await pipeline_for(sink).process(batch())
    sink.close()
    if suffix == ".jsonl":
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        positions = [r["source"]["offset"] for r in rows]
    else:
        rows = read_parquet(path)
        positions = [r["source_offset"] for r in rows]
    assert [r["id"] for r in rows] == ["e0", "e1", "e2"]
    assert [r["prediction"] for r in rows] == [1.0, 2.0, 3.0]
    assert positions == [0, 1, 2]
    dead = [orjson.loads(line) for line in (tmp_path / "scores.dead-letters.jsonl").read_bytes().splitlines()]
    assert [(d["error"], d["source"]["offset"]) for d in dead] == [("InvalidJSON", 3)]


async def test_outputs_addressed_to_neither_file_are_refused(tmp_path):
    sink = FileSink(tmp_path / "s.jsonl")
    with pytest.raises(ValueError, match="addressed to 'out'"):
        await sink.send([OutputRecord("out", None, b"{}")])
    sink.close()


async def test_several_outputs_per_event_become_a_list_column(tmp_path):
    sink = FileSink(tmp_path / "s.parquet")
    await pipeline_for(sink, TwoOutputs()).process(batch()[:3])
    sink.close()
    assert [r["prediction"] for r in read_parquet(tmp_path / "s.parquet")] == [[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]]


async def test_each_commit_closes_a_parquet_part_readable_on_its_own(tmp_path):
    folder = tmp_path / "s.parquet"
    sink = FileSink(folder, writer="run-1")
    pipeline = pipeline_for(sink)
    await pipeline.process(batch()[:2])
    state = sink.commit()
    assert state.parts == ("run-1-00000.parquet",)
    assert sink.commit() == state, "a commit with nothing new written closes no empty part"
    await pipeline.process(batch()[2:3])
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [".run-1-00001.parquet.inprogress"]
    assert len(read_parquet(folder)) == 2, "a part in progress is hidden from readers"
    sink.close()
    assert [pq.read_table(folder / name).num_rows for name in sorted(os.listdir(folder))] == [2, 1]


async def test_a_resumed_parquet_sink_drops_what_its_checkpoint_does_not_count(tmp_path):
    folder = tmp_path / "s.parquet"
    sink = FileSink(folder, writer="run-1")
    await pipeline_for(sink).process(batch()[:1])
    state = sink.commit()
    await pipeline_for(sink).process(batch()[1:2])
    sink.commit()  # closed after the checkpoint that recorded ``state``
    await pipeline_for(sink).process(batch()[2:3])  # in progress when the process died
    sink.abort()
    (folder / "other-00000.parquet").write_bytes((folder / state.parts[0]).read_bytes())  # another writer's
    resumed = FileSink(folder, writer="run-1", resume=state)
    assert sorted(os.listdir(folder)) == ["other-00000.parquet", "run-1-00000.parquet"]
    await pipeline_for(resumed).process(batch()[1:3])
    resumed.close()
    rows = read_parquet(folder)
    assert sorted(r["source_offset"] for r in rows) == [0, 0, 1, 2]  # offset 0 twice: the other writer's copy


async def test_a_resumed_jsonl_sink_cuts_lines_written_after_the_checkpoint_a_torn_one_too(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"earlier":"run"}\n')
    sink = FileSink(path)
    await pipeline_for(sink).process(batch()[:2])
    state = sink.commit()
    await pipeline_for(sink).process(batch()[2:])
    sink.close()
    with path.open("ab") as file:
        file.write(b'{"id":"e9","predic')  # a write cut short by SIGKILL
    resumed = FileSink(path, resume=state)
    await pipeline_for(resumed).process(batch()[2:])
    resumed.close()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line.get("id") for line in lines] == [None, "e0", "e1", "e2"]
    dead = (tmp_path / "s.dead-letters.jsonl").read_bytes().splitlines()
    assert [orjson.loads(d)["source"]["offset"] for d in dead] == [3]


async def test_a_resume_refuses_files_that_lost_rows_the_checkpoint_counts(tmp_path):
    sink = FileSink(tmp_path / "s.jsonl")
    await pipeline_for(sink).process(batch()[:2])
    state = sink.commit()
    sink.close()
    (tmp_path / "s.jsonl").write_bytes(b"")
    with pytest.raises(FileSinkError, match="changed since"):
        FileSink(tmp_path / "s.jsonl", resume=state)
    with pytest.raises(FileSinkError, match="gone"):
        FileSink(tmp_path / "p.parquet", resume=FileState({"p.dead-letters.jsonl": 0}, ("out-00000.parquet",)))
    with pytest.raises(FileSinkError, match="not a part this writer"):
        FileSink(tmp_path / "q.parquet", resume=FileState({"q.dead-letters.jsonl": 0}, ("../../etc/passwd",)))


# 8,000 bytes of someone else's file, which a checkpoint (anyone who can write the state folder wrote it) names.
VICTIM = (b'{"label": 1}' + b" " * 67 + b"\n") * 100


def planted(tmp_path: Path, lengths: dict[str, int]) -> tuple[Path, FileState]:
    """``training-set.jsonl`` (the victim's, 8,000 bytes) and its dead letters, and a state that names them."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "training-set.jsonl").write_bytes(VICTIM)
    (folder / "training-set.dead-letters.jsonl").write_bytes(b"")
    return folder / "training-set.jsonl", FileState(lengths)


def unlink_dead_letters(target: Path) -> None:
    target.with_name("training-set.dead-letters.jsonl").unlink()


def dead_letters_to_elsewhere(target: Path) -> None:
    elsewhere = target.parent.parent / "elsewhere.jsonl"
    elsewhere.write_bytes(VICTIM)
    dead = target.with_name("training-set.dead-letters.jsonl")
    dead.unlink()
    dead.symlink_to(elsewhere)


def output_to_elsewhere(target: Path) -> None:
    elsewhere = target.parent.parent / "elsewhere.jsonl"
    target.rename(elsewhere)
    target.symlink_to(elsewhere)


def dead_letters_a_fifo(target: Path) -> None:
    dead = target.with_name("training-set.dead-letters.jsonl")
    dead.unlink()
    os.mkfifo(dead)  # opened to append, it would block


COUNTED = {"training-set.jsonl": 10, "training-set.dead-letters.jsonl": 0}


@pytest.mark.parametrize(
    ("lengths", "change", "says"),
    [
        (COUNTED, unlink_dead_letters, "training-set.dead-letters.jsonl is gone but the checkpoint counts 0 bytes"),
        (COUNTED, dead_letters_to_elsewhere, "training-set.dead-letters.jsonl is a symbolic link"),
        (COUNTED, output_to_elsewhere, "training-set.jsonl is a symbolic link"),
        (COUNTED, dead_letters_a_fifo, "training-set.dead-letters.jsonl is not a regular file"),
        (
            {**COUNTED, "training-set.dead-letters.jsonl": 5},
            None,
            "training-set.dead-letters.jsonl holds 0 bytes but the checkpoint counts 5: it was changed since",
        ),
        (
            {**COUNTED, "../elsewhere.jsonl": 0},
            None,
            "the checkpoint records '../elsewhere.jsonl', which sink",
        ),
        ({**COUNTED, "other.jsonl": 0}, None, "the checkpoint records 'other.jsonl', which sink"),
        ({"training-set.jsonl": 10}, None, "the checkpoint does not record training-set.dead-letters.jsonl"),
    ],
)
def test_a_resume_changes_no_file_unless_every_file_its_checkpoint_names_is_the_sinks_own(
    tmp_path, lengths, change, says
):
    target, state = planted(tmp_path, lengths)
    if change is not None:
        change(target)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.jsonl") if p.is_file() and not p.is_symlink()}
    with pytest.raises(FileSinkError, match=re.escape(says)) as raised:
        FileSink(target, resume=state)
    assert "start a new run" in str(raised.value)
    assert {p: p.read_bytes() for p in before} == before, "nothing was cut before the refusal"
    with pytest.raises(FileSinkError, match=re.escape(says)):
        check_resume(target, state)


def test_a_resume_of_a_parquet_sink_deletes_no_part_before_every_file_is_checked(tmp_path):
    folder = tmp_path / "s.parquet"
    folder.mkdir()
    (folder / ".out-00001.parquet.inprogress").write_bytes(b"PAR1")
    (folder / "out-00000.parquet").symlink_to(tmp_path / "elsewhere.parquet")
    (tmp_path / "elsewhere.parquet").write_bytes(b"PAR1")
    (tmp_path / "s.dead-letters.jsonl").write_bytes(b"")
    state = FileState({"s.dead-letters.jsonl": 0}, ("out-00000.parquet",))
    with pytest.raises(FileSinkError, match=re.escape(f"{folder / 'out-00000.parquet'} is a symbolic link")):
        FileSink(folder, resume=state)
    (folder / "out-00000.parquet").unlink()
    (folder / "out-00000.parquet").write_bytes(b"PAR1")
    (tmp_path / "s.dead-letters.jsonl").unlink()
    with pytest.raises(FileSinkError, match=r"s\.dead-letters\.jsonl is gone"):
        FileSink(folder, resume=state)
    assert sorted(os.listdir(folder)) == [".out-00001.parquet.inprogress", "out-00000.parquet"]
    with pytest.raises(FileSinkError, match="the checkpoint records Parquet parts, which sink"):
        FileSink(tmp_path / "t.jsonl", resume=FileState({}, ("out-00000.parquet",)))


def test_a_resume_checks_the_files_of_its_own_part(tmp_path):
    sink = FileSink(tmp_path / "s.jsonl", part=(2, 3))
    state = sink.commit()
    sink.close()
    assert set(state.lengths) == {"s.part2of3.jsonl", "s.part2of3.dead-letters.jsonl"}
    check_resume(tmp_path / "s.jsonl", state, part=(2, 3))
    with pytest.raises(
        FileSinkError,
        match=re.escape("the checkpoint records 's.part2of3.dead-letters.jsonl', 's.part2of3.jsonl', which sink"),
    ):
        check_resume(tmp_path / "s.jsonl", state, part=(1, 3))
    FileSink(tmp_path / "s.jsonl", part=(2, 3), resume=state).close()


def test_processes_of_one_run_write_files_of_their_own(tmp_path):
    sink = FileSink(tmp_path / "s.jsonl", part=(2, 3))
    sink.close()
    assert sorted(os.listdir(tmp_path)) == ["s.part2of3.dead-letters.jsonl", "s.part2of3.jsonl"]


def test_unknown_file_formats_are_refused(tmp_path):
    with pytest.raises(FileSinkError, match=r"\.jsonl or \.parquet"):
        FileSink(tmp_path / "x.csv")


def test_targets_in_the_way_are_refused_before_anything_is_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo.jsonl")  # opening it to append would block
    with pytest.raises(FileSinkError, match="not a regular file"):
        check_target(tmp_path / "fifo.jsonl")
    (tmp_path / "old.parquet").write_bytes(b"PAR1")
    with pytest.raises(FileSinkError, match="is a file: Parquet output is a folder"):
        check_target(tmp_path / "old.parquet")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(FileSinkError, match="not a regular file"):
        check_target(tmp_path / "dir.jsonl")


def test_backfill_outputs_can_be_keyed_by_source_position():
    from streams.codecs.codec import decode, encode_predictions

    records = batch()[:2]
    out = encode_predictions(
        records,
        decode(records, SCHEMA),
        np.zeros(2),
        topic="o",
        model_name="m",
        model_version="1",
        now_ms=0,
        key_by_position=True,
    )
    assert [o.key for o in out] == [b"in:1:0", b"in:1:1"]
