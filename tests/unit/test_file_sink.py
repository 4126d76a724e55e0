from __future__ import annotations

import orjson
import pyarrow.parquet as pq
import pytest

from streams.codec import EventSchema, TensorField
from streams.file_sink import FileSink
from streams.pipeline import Pipeline, PipelineTopics
from streams.records import InputRecord
from tests.fakes import SumRunner

SCHEMA = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))


def batch() -> list[InputRecord]:
    good = [InputRecord("in", 1, i, 1_000, b"k", orjson.dumps({"id": f"e{i}", "x": [i, 1]})) for i in range(3)]
    return [*good, InputRecord("in", 1, 3, 1_000, b"k", b"broken")]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
async def test_predictions_go_to_the_file_and_dead_letters_beside_it(tmp_path, suffix):
    path = tmp_path / f"scores{suffix}"
    sink = FileSink(path, output_topic="out")
    pipeline = Pipeline(
        name="p",
        schema=SCHEMA,
        runner=SumRunner(),
        sink=sink,
        topics=PipelineTopics(output="out", dead_letter="dlq"),
        key_by_position=True,
    )
    await pipeline.process(batch())
    sink.close()
    if suffix == ".jsonl":
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        positions = [r["source"]["offset"] for r in rows]
    else:
        table = pq.read_table(path).to_pydict()
        rows = [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]
        positions = [r["source_offset"] for r in rows]
    assert [r["id"] for r in rows] == ["e0", "e1", "e2"]
    assert [r["prediction"] for r in rows] == [1.0, 2.0, 3.0]
    assert positions == [0, 1, 2]
    dead = [orjson.loads(line) for line in (tmp_path / "scores.dead-letters.jsonl").read_bytes().splitlines()]
    assert [(d["error"], d["source"]["offset"]) for d in dead] == [("InvalidJSON", 3)]


async def test_a_resumed_parquet_run_writes_a_new_part_beside_the_first(tmp_path):
    for _ in range(2):
        sink = FileSink(tmp_path / "s.parquet", output_topic="out")
        pipeline = Pipeline(
            name="p",
            schema=SCHEMA,
            runner=SumRunner(),
            sink=sink,
            topics=PipelineTopics(output="out", dead_letter="dlq"),
        )
        await pipeline.process(batch()[:1])
        sink.close()
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["s.parquet", "s.part1.parquet"]


def test_unknown_file_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.jsonl or \.parquet"):
        FileSink(tmp_path / "x.csv", output_topic="out")


def test_backfill_outputs_can_be_keyed_by_source_position():
    import numpy as np

    from streams.codec import decode, encode_predictions

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
