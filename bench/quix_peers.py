"""The peer a Python user would pick today: a Quix Streams (3.x) application, written the
way its documentation shows, scoring the same model into the same outputs as the Faust
peers (``bench.faust_peers``; model, scoring and output record from ``bench.peers``).

    BENCH_MODE=per_event|sink BENCH_MODEL=fraud-mlp BENCH_IN=topic BENCH_OUT=topic \\
        .venv/bin/python -m bench.quix_peers

- ``per_event``: ``Application`` with a consumer group reading from the earliest offset,
  ``app.topic`` with the JSON deserializer, a ``StreamingDataFrame`` that ``.apply``-s the
  model to each event and ``.to_topic``-s the prediction. Quix runs every dataframe
  function once per message: this is what its API gives.
- ``sink``: Quix documents no way to batch a transformation. Its only batching is the Sink
  API's ``BatchingSink``, meant for writing to external destinations: records accumulate
  per partition between checkpoints (``commit_every`` messages or ``commit_interval``
  seconds, here ``BENCH_TAKE`` and ``BENCH_WITHIN`` as for Faust's ``take()``) and reach
  ``write()`` as one batch. This variant scores each such batch in ``write()`` and produces
  the predictions with the documented ``app.get_producer()``, flushed before the
  checkpoint commits (at least once, as Quix's own outputs). It is the closest a Quix user
  can come to batched inference, not a facility Quix offers for it.

``BENCH_COUNT=N`` stops the application after N outputs (``app.run(count=N)``) and prints
one line ``quix drain: {"events": N, "seconds": ..., "per_s": ...}``, timed from the first
event processed to the end of the run (the final checkpoint's flush included). Without it the
application runs until SIGTERM, as the runner needs for its load points.

For the transformer, each account's last transactions are kept in Quix's per-key state
(``sdf.apply(..., stateful=True)``: RocksDB with a changelog topic, as its docs show), under
``state_dir``: a temporary directory removed on exit, so a run leaves nothing in the working tree.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
from quixstreams import Application
from quixstreams.kafka import Producer
from quixstreams.models import HeadersTuples
from quixstreams.sinks import BatchingSink, SinkBatch
from quixstreams.state import State

from bench.peers import DemoModel, PeerSettings, needs_history, prediction_record, with_history


class ScoringSink(BatchingSink):
    """Scores each checkpoint's batch of a partition in one call and produces the outputs."""

    def __init__(self, app: Application, topic: str, model: DemoModel, on_event: Callable[[], None]) -> None:
        super().__init__()
        self._app, self._topic, self._model, self._on_event = app, topic, model, on_event
        self._producer: Producer | None = None

    def setup(self) -> None:
        self._producer = self._app.get_producer()

    def add(
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: HeadersTuples,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        self._on_event()
        super().add(value, key, timestamp, headers, topic, partition, offset)

    def write(self, batch: SinkBatch) -> None:
        assert self._producer is not None
        items = list(batch)
        predictions = self._model.score([item.value for item in items])
        for item, prediction in zip(items, predictions, strict=True):
            record = prediction_record(item.value, prediction, item.timestamp)
            self._producer.produce(self._topic, value=orjson.dumps(record), key=item.key)

    def flush(self) -> None:
        super().flush()
        # Outputs acknowledged before Quix commits the input offsets of this checkpoint.
        if self._producer is not None:
            self._producer.flush()


def build(settings: PeerSettings, state_dir: str, on_event: Callable[[], None]) -> Application:
    batching = settings.mode == "sink"
    app = Application(
        broker_address=settings.bootstrap,
        consumer_group=settings.app_id,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        # Checkpoints (a sink's batches): Quix's defaults when nothing is batched.
        commit_every=settings.take if batching else 0,
        commit_interval=settings.within if batching else 5.0,
    )
    model = DemoModel(settings.model, torch_threads=settings.torch_threads)
    events = app.topic(settings.topic_in, key_deserializer="bytes", value_deserializer="json")
    sdf = app.dataframe(events)
    if needs_history(settings.model):

        def add_history(doc: dict[str, Any], state: State) -> dict[str, Any]:
            doc, kept = with_history(doc, state.get("history", []))
            state.set("history", kept)
            return doc

        sdf = sdf.apply(add_history, stateful=True)
    if batching:
        sdf.sink(ScoringSink(app, settings.topic_out, model, on_event))
        return app

    def score(doc: dict[str, Any], key: bytes, timestamp: int, headers: Any) -> dict[str, Any]:
        on_event()
        (prediction,) = model.score([doc])
        return prediction_record(doc, prediction, timestamp)

    predictions = app.topic(settings.topic_out, key_serializer="bytes", value_serializer="json")
    sdf = sdf.apply(score, metadata=True)
    sdf.to_topic(predictions)
    return app


def main() -> None:
    settings = PeerSettings.from_env(default_mode="per_event")
    if settings.mode not in ("per_event", "sink"):
        raise SystemExit(f"BENCH_MODE must be per_event or sink, not {settings.mode!r}")
    count = int(os.environ.get("BENCH_COUNT", "0"))
    first: list[float] = []

    def on_event() -> None:
        if not first:
            first.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = build(settings, state_dir, on_event)
        app.run(count=count, collect=False)
    if count and first:
        seconds = time.perf_counter() - first[0]
        line = {"events": count, "seconds": round(seconds, 3), "per_s": round(count / seconds, 1)}
        print(f"quix drain: {orjson.dumps(line).decode()}", flush=True)


if __name__ == "__main__":
    main()
