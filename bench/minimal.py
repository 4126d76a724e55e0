"""The minimal pipeline: the same job as ``sluice worker`` on the demo pipeline, written by hand
on the same client the way a competent engineer would without a framework. It is a ceiling
for sluice's drain, measured in the same run (``bench.latency --strategies minimal,...``).

    BENCH_MODEL=fraud-mlp BENCH_IN=topic BENCH_OUT=topic .venv/bin/python -m bench.minimal

Per fetch (``getmany``, up to 512 records per partition): msgspec decodes only the fields
the model reads (``id`` and ``features``; for the transformer also the three history
fields), one ``np.array`` per input, the trained demo model under ``torch.inference_mode()``
on one torch thread in the event loop's thread, ``orjson.dumps`` of ``{id, prediction,
event_ts}`` per event (``event_ts`` the input's timestamp, which the runner needs for
latency, as every peer's output carries), and one ``create_batch``/``send_batch`` per
partition with ``acks=all`` on an idempotent producer; at most 64 batches in flight.

What it leaves out is what sluice's guarantees cost: no offsets committed (a restart
re-reads the topic from its first offset), no dead letters (an event it cannot decode
stops it), no latency budget (a fetch is scored as it comes), no headers copied, no
metrics. The transformer's history is a plain dict of the account's last rows, per record
key, in memory only (nothing survives a restart).

The consumer group is ``BENCH_APP_ID``; it runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from typing import Any

import msgspec
import numpy as np
import orjson
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.build import FETCH_BYTES_PER_PARTITION
from bench.peers import HISTORY_EVENTS, HISTORY_FIELDS, PeerSettings, needs_history
from models.loading import ModelSpec, load_model

MAX_IN_FLIGHT = 64


class Event(msgspec.Struct):
    id: str
    features: list[float]


class HistoryEvent(msgspec.Struct):
    id: str
    features: list[float]
    amount: float
    merchant_risk: float
    foreign: float


class History:
    """Each key's last ``HISTORY_EVENTS`` rows, this event's included, as the model reads them:
    zero rows first, a mask column last."""

    def __init__(self) -> None:
        self._rows: dict[bytes | None, deque[tuple[float, ...]]] = {}
        self._width = len(HISTORY_FIELDS) + 1

    def batch(self, keys: list[bytes | None], events: list[HistoryEvent]) -> np.ndarray:
        out = np.zeros((len(events), HISTORY_EVENTS, self._width), dtype=np.float32)
        for i, (key, event) in enumerate(zip(keys, events, strict=True)):
            rows = self._rows.get(key)
            if rows is None:
                rows = self._rows[key] = deque(maxlen=HISTORY_EVENTS)
            rows.append((event.amount, event.merchant_risk, event.foreign, 1.0))
            out[i, HISTORY_EVENTS - len(rows) :] = rows
        return out


# The steps are functions so that a profile (bench.drain_profile) names each one.
def decode_events(decoder: msgspec.json.Decoder[Any], records: list[Any]) -> list[Any]:
    return [decoder.decode(r.value) for r in records]


def score(module: torch.nn.Module, history: History | None, records: list[Any], events: list[Any]) -> list[float]:
    inputs = [torch.from_numpy(np.array([e.features for e in events], dtype=np.float32))]
    if history is not None:
        inputs.append(torch.from_numpy(history.batch([r.key for r in records], events)))
    with torch.inference_mode():
        return module(*inputs).tolist()


def encode_outputs(records: list[Any], events: list[Any], predictions: list[float]) -> list[bytes]:
    return [
        orjson.dumps({"id": event.id, "prediction": prediction, "event_ts": record.timestamp})
        for record, event, prediction in zip(records, events, predictions, strict=True)
    ]


async def produce(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: list[Any],
    values: list[bytes],
    in_flight: deque[asyncio.Future[Any]],
) -> None:
    batch = producer.create_batch()
    for record, value in zip(records, values, strict=True):
        if batch.append(key=record.key, value=value, timestamp=None) is None:
            in_flight.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=record.key, value=value, timestamp=None)
    in_flight.append(await producer.send_batch(batch, topic, partition=partition))


async def run(settings: PeerSettings, stop: asyncio.Event) -> None:
    torch.set_num_threads(settings.torch_threads or 1)
    module = load_model(ModelSpec(demo=settings.model)).module.eval()
    history = History() if needs_history(settings.model) else None
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(HistoryEvent if history else Event)
    consumer = AIOKafkaConsumer(
        settings.topic_in,
        bootstrap_servers=settings.bootstrap,
        group_id=settings.app_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, max_batch_size=1024 * 1024
    )
    await consumer.start()
    await producer.start()
    in_flight: deque[asyncio.Future[Any]] = deque()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=100, max_records=512)
            for tp, records in fetched.items():
                events = decode_events(decoder, records)
                predictions = score(module, history, records, events)
                values = encode_outputs(records, events, predictions)
                await produce(producer, settings.topic_out, tp.partition, records, values, in_flight)
            while len(in_flight) > MAX_IN_FLIGHT:
                await in_flight.popleft()
        await asyncio.gather(*in_flight)
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    settings = PeerSettings.from_env("minimal")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    try:
        import uvloop

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
