"""Operator mistakes against the real broker: each ends the command with status 2 and one line saying what to fix.

With a broker that answers, a mistake found after a consumer started used to end `sluice
backfill` with status 0 and nothing said (aiokafka's CancelledError from stopping that
consumer replaced the error; Faust takes a cancelled command for a clean stop).
"""

from __future__ import annotations

import subprocess

import pytest
from aiokafka import AIOKafkaConsumer

from streams.kafka.replay import start_consumer, stop_consumer
from tests.integration.kafka_helpers import run_sluice, topics_for, unique, write_config


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


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
