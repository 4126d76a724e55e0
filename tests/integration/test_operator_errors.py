"""Operator mistakes against the real broker: each ends the command with status 2 and one line saying what to fix.

With a broker that answers, a mistake found after a consumer started used to end `sluice
backfill` with status 0 and nothing said (aiokafka's CancelledError from stopping that
consumer replaced the error; Faust takes a cancelled command for a clean stop).
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from aiokafka import AIOKafkaConsumer

from app.topics import ensure_topics
from streams.backfill.checkpoint import Checkpoint
from streams.backfill.replay_plan import ReplayPlan
from streams.kafka.replay import start_consumer, stop_consumer
from streams.records import Partition
from tests.integration.kafka_helpers import run_sluice, topics_for, unique, write_config
from tests.one_line import one_line_exit_2


@pytest.mark.parametrize("sink", [[], ["--sink", "file:scores.jsonl"]])
def test_a_backfill_of_a_pipeline_that_does_not_exist_exits_2_naming_the_pipelines(kafka, tmp_path, sink):
    config = write_config(tmp_path, bootstrap=kafka, pipeline="fraud", **topics_for(unique("nopipe")))
    result = run_sluice("--config", str(config), "backfill", "-p", "nosuch", *sink, "--state-dir", str(tmp_path / "s"))
    assert one_line_exit_2(result) == (
        f"sluice backfill: --pipeline 'nosuch': no such pipeline in {config}; pipelines: fraud"
    )


def test_a_backfill_to_a_sink_it_cannot_write_exits_2(kafka, tmp_path):
    config = write_config(tmp_path, bootstrap=kafka, pipeline="fraud", **topics_for(unique("badsink")))
    (tmp_path / "old.parquet").write_bytes(b"PAR1")  # a file where Parquet output (a folder) goes
    result = run_sluice(
        "--config", str(config), "backfill", "--sink", f"file:{tmp_path / 'old.parquet'}", "--state-dir", str(tmp_path)
    )
    assert "is a file: Parquet output is a folder of part files" in one_line_exit_2(result)


def test_watch_on_a_topic_that_does_not_exist_exits_2_naming_it(kafka, tmp_path):
    topics = topics_for(unique("nowatch"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="fraud", **topics)
    result = run_sluice("--config", str(config), "watch", "--topic", "no-such-topic-here", "--count", "1")
    line = one_line_exit_2(result)
    assert line.startswith(f"sluice watch: topic 'no-such-topic-here' does not exist on {kafka}: check --topic")
    assert topics["output_topic"] in line


async def test_stopping_a_consumer_just_started_keeps_the_error_being_handled(kafka):
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=None, enable_auto_commit=False)
    with pytest.raises(LookupError, match="the real error"):
        await start_consumer(consumer)
        try:
            raise LookupError("the real error")
        finally:
            await stop_consumer(consumer)


# Imported, it leaves a file behind: the proof that a resume ran code its checkpoint named.
PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
import torch
class Net(torch.nn.Module):
    def forward(self, x):
        return x.sum(dim=1, keepdim=True)
"""


def test_a_resume_never_imports_a_module_that_only_its_checkpoint_names(kafka, tmp_path):
    # Whoever can write the state folder could name any module on the path in a checkpoint's
    # run.model; before, `--resume` imported it once the broker answered.
    topics = topics_for(unique("planted"))
    config = write_config(tmp_path, bootstrap=kafka, pipeline="fraud", **topics)
    marker = tmp_path / "imported"
    (tmp_path / "planted_model.py").write_text(PLANTED.format(marker=str(marker)))
    torch.save(torch.nn.Module().state_dict(), tmp_path / "w.pt")
    state = tmp_path / "state"
    state.mkdir()
    model = f"planted_model:Net={tmp_path / 'w.pt'}"
    run = {"id": "r1", "pipeline": "fraud", "model": model, "sink": f"kafka:{topics['output_topic']}", "part": [1, 1]}
    tp = Partition(topics["input_topic"], 0)
    Checkpoint(state / "r1.part1of1.json", run, ReplayPlan({tp: 0}, {tp: 0})).save()
    env = {"PYTHONPATH": str(tmp_path)}
    result = run_sluice("--config", str(config), "backfill", "--resume", "r1", "--state-dir", str(state), env=env)
    assert one_line_exit_2(result) == (
        f"sluice backfill: checkpoint {state / 'r1.part1of1.json'}: model: run r1 was started with --model "
        f"{model!r}; a resume loads a model file or module only when the command line names it: "
        f"repeat --model {model!r} if it is the model you mean to run"
    )
    assert not marker.exists()


@pytest.mark.parametrize("value", ["99999999999999999999", "\u00b2"])
async def test_a_backfill_from_a_timestamp_kafka_cannot_hold_exits_2_before_asking_the_broker(kafka, tmp_path, value):
    topics = topics_for(unique("farfuture"))
    await ensure_topics(kafka, [topics["input_topic"]], create=True, partitions=1)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="fraud", **topics)
    result = await asyncio.to_thread(
        run_sluice, "--config", str(config), "backfill", "--from-timestamp", value, "--state-dir", str(tmp_path / "s")
    )
    assert one_line_exit_2(result).startswith(
        f"sluice backfill: --from-timestamp {value!r}: expected milliseconds since the epoch (ASCII digits"
    )
