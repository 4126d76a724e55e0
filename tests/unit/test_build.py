"""The one builder: the worker, the backfill and the benchmarks get their objects from app.build."""

from __future__ import annotations

from app.build import PRODUCER_SETTINGS, build_batcher, build_pipeline
from app.config import load_config
from streams.cost_model import CostModel
from streams.pipeline import PipelineTopics
from tests.fakes import ListSink, SumRunner
from tests.unit.test_config import GOOD, write

SETTINGS = 'dead_letter_topic = "dlq"\ndead_letter_copy_bytes = 4096\nheaders = ["trace-id"]\nlatency_budget_ms = 20'


def pipeline_config(tmp_path):
    (pipeline,) = load_config(
        write(tmp_path, GOOD.replace('dead_letter_topic = "dlq"', SETTINGS)), environ={}
    ).pipelines
    return pipeline


def test_both_modes_carry_the_pipelines_dead_letter_and_header_settings(tmp_path):
    p = pipeline_config(tmp_path)
    live = build_pipeline(p, SumRunner(), ListSink(), "live")
    backfill = build_pipeline(
        p,
        SumRunner(),
        ListSink(),
        "backfill",
        topics=PipelineTopics("scores", "dlq"),
    )
    for pipeline in (live, backfill):
        assert pipeline.dead_letter_copy_bytes == 4096
        assert pipeline.schema == p.schema
    assert (live.topics.output, live.key_by_position) == ("out", False)
    assert (backfill.topics.output, backfill.key_by_position) == ("scores", True)


def test_the_live_batcher_keeps_the_budget_and_the_backfill_batcher_has_none(tmp_path):
    p = pipeline_config(tmp_path)
    assert build_batcher(p, CostModel(), "live").policy.latency_budget_ms == 20
    assert build_batcher(p, CostModel(), "backfill").policy.latency_budget_ms is None


def test_the_backfill_producer_batches_more_than_the_live_one():
    assert PRODUCER_SETTINGS["backfill"]["linger_ms"] > PRODUCER_SETTINGS["live"]["linger_ms"]
    assert PRODUCER_SETTINGS["backfill"]["max_batch_size"] >= PRODUCER_SETTINGS["live"]["max_batch_size"]
