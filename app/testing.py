"""Test your own model and config without a broker: the worker's pipeline over given events.

``score`` reads the config file with the worker's loader, loads and checks the pipeline's model
as the worker does (or the one given), builds the same pipeline in live mode (decode, per-key
features, the batcher, the model runner, encode, dead letters) and runs it through the real
driver over ``streams.testing.EventSource`` until every event is scored or dead-lettered::

    from app.testing import Event, score

    out = score("config/sluice.toml", "fraud", [Event({"id": "tx-1", "features": [0.0] * 32}, key="acct-1")])
    assert out.predictions[0]["id"] == "tx-1"

A mistake in the config raises the ``ConfigError`` the worker stops with, and a model that
does not fit the pipeline the worker's ``ModelLoadError``, with the same message. Not covered:
anything Kafka does (no consumer group, commits, transactions, rebalances, restored state),
nor the start-up checks that need the broker (topics, their record size limits).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.build import build_batcher, build_pipeline, build_runner, load_checked_model
from app.config import Config, PipelineConfig, load_config
from app.model_refs import plain_model_spec
from models.loading import LoadedModel
from models.registry import DEMO_MODELS
from models.spec import ModelSpec
from streams.errors import ModelLoadError
from streams.flow.cost_model import CostModel
from streams.flow.driver import Driver
from streams.kafka.rekey import Rekeying
from streams.records import OutputRecord
from streams.testing import CollectingSink, CountingProgress, Event, EventSource, Value

__all__ = ["Event", "Outputs", "score", "score_async"]

# A model other than the config's: a ModelSpec (any format), a demo model's name, a torch.export
# archive (``.pt2``), or ``package.module:Class=weights.pt`` (a class and its state dict).
ModelRef = ModelSpec | str | os.PathLike[str]
# The re-keying stage's cost per event before it measures its own (as the worker's).
REKEY_SECONDS_PER_EVENT = 5e-6


@dataclass(frozen=True)
class Outputs:
    """What the pipeline sent, each value parsed from JSON, in the order sent (batch by batch, in the
    order of the events given)."""

    predictions: list[dict[str, Any]]  # the output topic's records
    dead_letters: list[dict[str, Any]]  # the dead-letter topic's (each with its error and reason)
    records: list[OutputRecord]  # every output as sent (keys, headers), re-keyed events included

    def scores(self) -> dict[Any, Any]:
        """Each prediction by its event's id."""
        return {p["id"]: p["prediction"] for p in self.predictions}


def score(
    config_path: str | os.PathLike[str],
    pipeline: str | None,
    events: Iterable[Event | Value],
    *,
    model: ModelRef | None = None,
    now_ms: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Outputs:
    """``score_async`` on an event loop of its own: for plain test functions."""
    return asyncio.run(score_async(config_path, pipeline, events, model=model, now_ms=now_ms, environ=environ))


async def score_async(
    config_path: str | os.PathLike[str],
    pipeline: str | None,
    events: Iterable[Event | Value],
    *,
    model: ModelRef | None = None,
    now_ms: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Outputs:
    """Score ``events`` through pipeline ``pipeline`` (None: the first) of the config file.

    An event given as a plain value has no key; its topic is the pipeline's input topic, its
    partition 0. ``model``: serve this instead of the config's model. ``now_ms``: the time the
    pipeline runs at, for events without a timestamp and for judging which events are late
    (default: the wall clock when scoring starts); it stands still while they are scored, so
    which events are late depends only on their timestamps. ``environ``: the environment the
    config is read with (default ``os.environ``, as the worker's).
    """
    config = load_config(config_path, environ)
    p = config.pipeline(pipeline) if pipeline is not None else config.pipelines[0]
    loaded = await asyncio.to_thread(_load, config, p, model)
    runner, cost = await asyncio.to_thread(build_runner, config, p, loaded)
    state_dir = None
    if p.state is not None and p.state.store == "rocksdb":  # never the worker's databases
        state_dir = Path(tempfile.mkdtemp(prefix="sluice-testing-"))
        p = replace(p, state=replace(p.state, directory=state_dir))
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    sink = CollectingSink()
    try:
        source = EventSource(events, topic=p.source_topics[0], now_ms=now)
        if p.rekey is not None:
            source = await _rekeyed(config, p, source, sink, now)
        scoring = build_pipeline(p, runner, sink, "live", emit_features=p.emit_features)
        try:
            batcher = build_batcher(p, cost, "live")
            progress = CountingProgress()
            await Driver(source, scoring, batcher, progress, late_events=p.late_events, clock_ms=lambda: now).run()
        finally:
            if scoring.stateful is not None:
                scoring.stateful.close()
    finally:
        await runner.aclose()
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    return Outputs(sink.decoded(p.output_topic), sink.decoded(p.dead_letter_topic), sink.records)


def model_spec(model: ModelRef | None, p: PipelineConfig) -> ModelSpec:
    """The spec of ``model`` (see ``ModelRef``); the pipeline's own model for None."""
    if model is None:
        return p.model
    if isinstance(model, ModelSpec):
        return model
    ref = os.fspath(model)
    spec = plain_model_spec(ref)
    if spec is not None:
        return spec
    raise ValueError(
        f"model {ref!r}: expected a demo model ({', '.join(DEMO_MODELS)}), a .pt2 file, "
        "package.module:Class=weights.pt, or a models.spec.ModelSpec"
    )


def _load(config: Config, p: PipelineConfig, model: ModelRef | None) -> LoadedModel:
    spec = model_spec(model, p)
    try:
        return load_checked_model(p, spec)
    except ModelLoadError as exc:
        if model is not None:
            raise
        # As the worker says it (app.worker.prepare_worker): the config's key, then the model.
        raise ModelLoadError(f"{config.path}: key 'pipelines.{p.name}.model': {exc}") from None


async def _rekeyed(
    config: Config, p: PipelineConfig, source: EventSource, sink: CollectingSink, now: int
) -> EventSource:
    """A pipeline keyed by an event field: the worker's re-keying stage first, through the same
    driver; its records on the repartition topic are the pipeline's events."""
    assert p.rekey is not None
    stage = Rekeying(
        name=p.name,
        field=p.rekey.field,
        topic=p.rekey.topic,
        partitions=config.app.topic_partitions,  # what the worker creates the topic with
        sink=sink,
        dead_letter_topic=p.dead_letter_topic,
        max_payload_bytes=p.schema.max_payload_bytes,
        dead_letter_copy_bytes=p.dead_letter_copy_bytes,
    )
    batcher = build_batcher(p, CostModel(fallback_seconds_per_event=REKEY_SECONDS_PER_EVENT), "live")
    await Driver(source, stage, batcher, CountingProgress(), clock_ms=lambda: now).run()
    routed = [
        Event(r.value, r.key, r.timestamp, r.to_partition or 0, r.topic, r.headers) for r in sink.on(p.rekey.topic)
    ]
    return EventSource(routed, topic=p.rekey.topic, now_ms=now)
