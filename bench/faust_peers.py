"""The peers sluice is measured against: what a Faust user writes first.

    BENCH_MODE=per_event|take BENCH_MODEL=fraud-mlp BENCH_IN=topic BENCH_OUT=topic \\
        faust -A bench.faust_peers worker -l warn --without-web

- ``per_event``: a plain agent scoring each event as it comes (batch of one).
- ``take``: fixed-size batching with ``stream.take_events(BENCH_TAKE, within=BENCH_WITHIN)``.

Both decode with orjson, score the same trained model under ``torch.inference_mode()``
inline in the agent (as such agents are usually written), and produce one JSON output per
event keyed like its input, with the input's timestamp, to the output topic (the model,
its scoring and the output record are shared with the other peers: ``bench.peers``).

A model that reads per-key history (the transformer) gets it from a Faust ``Table`` keyed by
the event's key, as Faust's docs keep per-key state: in memory, with its changelog topic.
Only the ``per_event`` agent keeps one: a table's write goes to the changelog partition of
the *current* event, which in a ``take_events`` batch is one event's for the whole batch.
"""

from __future__ import annotations

from typing import Any

import faust
import orjson

from bench.peers import DemoModel, PeerSettings, needs_history, prediction_record, with_history

settings = PeerSettings.from_env(default_mode="per_event")

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.bootstrap}",
    web_enabled=False,
    topic_partitions=settings.partitions,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(settings.topic_in, key_serializer="raw", value_serializer="raw")
sink = app.topic(settings.topic_out, key_serializer="raw", value_serializer="raw")

model = DemoModel(settings.model, torch_threads=settings.torch_threads)
# The account's last transactions, by the event's key: str keys and list values, in the
# app's default serializer (JSON) in the changelog; the topics above read and write raw bytes.
history = app.Table("history", default=list, partitions=settings.partitions) if needs_history(settings.model) else None


def output(doc: dict[str, Any], prediction: float, timestamp: float) -> bytes:
    return orjson.dumps(prediction_record(doc, prediction, int(timestamp * 1000)))


if settings.mode == "per_event":

    @app.agent(source)
    async def per_event(stream: faust.StreamT) -> None:
        async for event in stream.events():
            doc = orjson.loads(event.value)
            if history is not None:
                key = event.key.decode()
                doc, history[key] = with_history(doc, history[key])
            (prediction,) = model.score([doc])
            await sink.send(key=event.key, value=output(doc, prediction, event.message.timestamp))

elif settings.mode == "take":
    if history is not None:
        raise SystemExit("BENCH_MODE=take keeps no per-key history (see the module's docstring)")

    @app.agent(source)
    async def take(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.take, within=settings.within):  # type: ignore[attr-defined]
            docs = [orjson.loads(e.value) for e in events]
            predictions = model.score(docs)
            for event, doc, prediction in zip(events, docs, predictions, strict=True):
                await sink.send(key=event.key, value=output(doc, prediction, event.message.timestamp))

else:
    raise SystemExit(f"BENCH_MODE must be per_event or take, not {settings.mode!r}")
