"""The peers sluice is measured against: what a Faust user writes first.

    BENCH_MODE=per_event|take BENCH_MODEL=fraud-mlp BENCH_IN=topic BENCH_OUT=topic \\
        faust -A bench.faust_peers worker -l warn --without-web

- ``per_event``: a plain agent scoring each event as it comes (batch of one).
- ``take``: fixed-size batching with ``stream.take_events(BENCH_TAKE, within=BENCH_WITHIN)``.

Both decode with orjson, score the same trained model under ``torch.inference_mode()``
inline in the agent (as such agents are usually written), and produce one JSON output per
event keyed like its input, with the input's timestamp, to the output topic.
"""

from __future__ import annotations

import os
from typing import Any

import faust
import numpy as np
import orjson
import torch

from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS

MODE = os.environ.get("BENCH_MODE", "per_event")
MODEL = os.environ.get("BENCH_MODEL", "fraud-mlp")
TAKE = int(os.environ.get("BENCH_TAKE", "256"))
WITHIN = float(os.environ.get("BENCH_WITHIN", "0.01"))

app = faust.App(
    os.environ.get("BENCH_APP_ID", f"bench-{MODE}"),
    broker=os.environ.get("BENCH_BROKER", "kafka://127.0.0.1:9092"),
    key_serializer="raw",
    value_serializer="raw",
    web_enabled=False,
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "2")),
    consumer_auto_offset_reset="earliest",
)
source = app.topic(os.environ.get("BENCH_IN", "bench-in"), key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ.get("BENCH_OUT", "bench-out"), key_serializer="raw", value_serializer="raw")

torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "0")) or torch.get_num_threads())
model = load_model(ModelSpec(demo=MODEL)).module.eval()
fields = DEMO_MODELS[MODEL].inputs


def score(docs: list[dict[str, Any]]) -> list[float]:
    tensors = [torch.from_numpy(np.array([d[f] for d in docs], dtype=np.float32)) for f in fields]
    with torch.inference_mode():
        return list(model(*tensors).tolist())


def output(doc: dict[str, Any], prediction: float, timestamp: float) -> bytes:
    return orjson.dumps({"id": doc["id"], "prediction": prediction, "event_ts": int(timestamp * 1000)})


if MODE == "per_event":

    @app.agent(source)
    async def per_event(stream: faust.StreamT) -> None:
        async for event in stream.events():
            doc = orjson.loads(event.value)
            (prediction,) = score([doc])
            await sink.send(key=event.key, value=output(doc, prediction, event.message.timestamp))

elif MODE == "take":

    @app.agent(source)
    async def take(stream: faust.StreamT) -> None:
        async for events in stream.take_events(TAKE, within=WITHIN):  # type: ignore[attr-defined]
            docs = [orjson.loads(e.value) for e in events]
            predictions = score(docs)
            for event, doc, prediction in zip(events, docs, predictions, strict=True):
                await sink.send(key=event.key, value=output(doc, prediction, event.message.timestamp))

else:
    raise SystemExit(f"BENCH_MODE must be per_event or take, not {MODE!r}")
