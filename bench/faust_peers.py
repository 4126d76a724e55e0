"""The peers sluice is measured against: what a Faust user writes first.

    BENCH_MODE=per_event|take BENCH_MODEL=fraud-mlp BENCH_IN=topic BENCH_OUT=topic \\
        faust -A bench.faust_peers worker -l warn --without-web

- ``per_event``: a plain agent scoring each event as it comes (batch of one).
- ``take``: fixed-size batching with ``stream.take_events(BENCH_TAKE, within=BENCH_WITHIN)``.

Both decode with orjson, score the same trained model under ``torch.inference_mode()``
inline in the agent (as such agents are usually written), and produce one JSON output per
event keyed like its input, with the input's timestamp, to the output topic (the model,
its scoring and the output record are shared with the other peers: ``bench.peers``).
"""

from __future__ import annotations

from typing import Any

import faust
import orjson

from bench.peers import DemoModel, PeerSettings, prediction_record

settings = PeerSettings.from_env(default_mode="per_event")

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.bootstrap}",
    key_serializer="raw",
    value_serializer="raw",
    web_enabled=False,
    topic_partitions=settings.partitions,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(settings.topic_in, key_serializer="raw", value_serializer="raw")
sink = app.topic(settings.topic_out, key_serializer="raw", value_serializer="raw")

model = DemoModel(settings.model, torch_threads=settings.torch_threads)


def output(doc: dict[str, Any], prediction: float, timestamp: float) -> bytes:
    return orjson.dumps(prediction_record(doc, prediction, int(timestamp * 1000)))


if settings.mode == "per_event":

    @app.agent(source)
    async def per_event(stream: faust.StreamT) -> None:
        async for event in stream.events():
            doc = orjson.loads(event.value)
            (prediction,) = model.score([doc])
            await sink.send(key=event.key, value=output(doc, prediction, event.message.timestamp))

elif settings.mode == "take":

    @app.agent(source)
    async def take(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.take, within=settings.within):  # type: ignore[attr-defined]
            docs = [orjson.loads(e.value) for e in events]
            predictions = model.score(docs)
            for event, doc, prediction in zip(events, docs, predictions, strict=True):
                await sink.send(key=event.key, value=output(doc, prediction, event.message.timestamp))

else:
    raise SystemExit(f"BENCH_MODE must be per_event or take, not {settings.mode!r}")
