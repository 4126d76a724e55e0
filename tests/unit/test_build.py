"""The one builder: the worker, the backfill and the benchmarks get their objects from app.build."""

from __future__ import annotations

import dataclasses
import math

from app.build import FETCH_MIN_BYTES, PRODUCER_SETTINGS, build_batcher, build_pipeline, live_fetch_pacing
from app.config import load_config
from streams.flow.cost_model import CostModel
from streams.flow.pipeline import PipelineTopics
from streams.kafka.fetch_pacing import FetchPacing
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


def test_a_live_fetch_is_held_for_a_fuller_answer_within_the_fill_wait_and_the_budget(tmp_path):
    p = pipeline_config(tmp_path)  # latency_budget_ms = 20, max_fill_wait_ms = 5 (default)
    assert live_fetch_pacing(p) == FetchPacing(busy_min_bytes=FETCH_MIN_BYTES, busy_wait_ms=2, idle_wait_ms=p.poll_ms)
    assert live_fetch_pacing(dataclasses.replace(p, latency_budget_ms=500.0)).busy_wait_ms == 5
    assert live_fetch_pacing(dataclasses.replace(p, latency_budget_ms=5.0)).busy_wait_ms == 1
    # Never longer than an idle fetch, whatever the budget and the fill wait (TOML allows inf).
    unbounded = dataclasses.replace(p, latency_budget_ms=math.inf, max_fill_wait_ms=math.inf)
    assert live_fetch_pacing(unbounded).busy_wait_ms == p.poll_ms
    # max_fill_wait_ms = 0: never wait for more; the broker answers as soon as anything arrived.
    never = live_fetch_pacing(dataclasses.replace(p, max_fill_wait_ms=0.0))
    assert (never.busy_min_bytes, never.busy_wait_ms) == (1, p.poll_ms)
    # A consumer starts idle: the first event after a quiet spell is answered at once.
    assert live_fetch_pacing(p).idle_settings() == {"fetch_min_bytes": 1, "fetch_max_wait_ms": p.poll_ms}
