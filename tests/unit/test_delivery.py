"""Delivery, the one owner of sending outputs: re-sending while the destination is away, refused
records replaced by dead letters, fatal errors raised, with fakes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

import orjson
import pytest

import streams.flow.backoff
import streams.flow.delivery
from streams.codecs.codec import EventSchema, TensorField
from streams.errors import DeliveryFailed
from streams.flow.acknowledger import Acknowledger, InFlight
from streams.flow.delivery import Delivery
from streams.flow.live_stats import LiveStats
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.metrics import PipelineMetrics
from streams.records import InputRecord, OutputRecord
from tests.fakes import ListSink, RecordingProgress, SumRunner, until


def delivery(sink: ListSink) -> Delivery:
    return Delivery(sink, pipeline="p", dead_letter_topic="dlq", max_copy_bytes=1024, clock_ms=lambda: 0)


def output(offset: int) -> OutputRecord:
    return OutputRecord("out", None, orjson.dumps({"offset": offset}), 0)


class AwaySink(ListSink):
    """Unreachable for its first ``away`` sends (``when``: at the send itself, or at its acknowledgement)."""

    def __init__(self, away: int, when: str) -> None:
        super().__init__()
        self.away, self.when, self.sends = away, when, 0

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        self.sends += 1
        if self.sends <= self.away:
            if self.when == "send":
                raise DeliveryFailed("KafkaConnectionError: broker away")
            return _fails(DeliveryFailed("RequestTimedOutError"))
        return await super().send(records)


async def _fails(error: BaseException) -> None:
    raise error


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(streams.flow.backoff, "FIRST_RETRY_S", 0.001)


@pytest.mark.parametrize("when", ["send", "acknowledgement"])
async def test_outputs_the_destination_could_not_take_are_sent_again_until_it_does(when, caplog):
    caplog.set_level(logging.INFO)
    sink = AwaySink(away=2, when=when)
    owner = delivery(sink)
    shipment = await owner.send([output(1), output(2)])  # never raises for a retriable failure
    await asyncio.wait_for(owner.settle(shipment, events=2), 5)
    assert [orjson.loads(r.value)["offset"] for r in sink.records] == [1, 2], "delivered once, in order"
    assert sink.sends == 3
    assert "sending them again" in caplog.text and "delivered after 2 attempt(s)" in caplog.text


async def test_a_fatal_error_is_raised_from_settle_and_nothing_is_retried():
    class Broken(ListSink):
        async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
            return _fails(RuntimeError("producer closed"))

    owner = delivery(Broken())
    with pytest.raises(RuntimeError, match="producer closed"):
        await owner.settle(await owner.send([output(1)]))


async def test_acknowledgement_time_is_learned_from_first_attempts_only():
    owner = delivery(ListSink())
    before = owner.ack_ms
    await owner.deliver([output(1)])
    assert owner.ack_ms < before, "an instant acknowledgement lowers the estimate"


class LateAcks(ListSink):
    """Acknowledges each send only when the test says so (``ack_next``), in order."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        await (await super().send(records))
        future = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        return future


async def test_the_acknowledgement_overhead_the_batcher_plans_with_is_learned_as_before(monkeypatch):
    """``ack_ms`` is how long a batch's acknowledgement keeps it waiting once the batches before it
    are settled, not its whole send -> ack time: with batches in flight, the batcher (which adds it
    to every batch's predicted time) would otherwise take far smaller batches under a budget (with
    a 50 ms budget and 4,096 events queued, 2,754 with 2.9 ms, 1,413 with 20.8 ms). A fake clock:
    a batch is sent every 1 ms and acknowledged 40 ms after its send."""
    now = [0.0]
    monkeypatch.setattr(streams.flow.delivery.time, "perf_counter", lambda: now[0])
    sink = LateAcks()
    pipeline = Pipeline(
        name="p",
        schema=EventSchema(id_field="id", inputs=(TensorField("x", (2,)),)),
        runner=SumRunner(),
        sink=sink,
        topics=PipelineTopics(output="out", dead_letter="dlq"),
    )
    delivery = pipeline.delivery
    acks = Acknowledger(
        delivery,
        RecordingProgress(),
        max_in_flight=64,
        latency_budget_ms=50,
        clock_ms=lambda: 1_000,
        metrics=PipelineMetrics("p"),
        stats=LiveStats(),
    )
    running = asyncio.create_task(acks.run())
    batches, send_every, ack_after = 40, 0.001, 0.040
    for k in range(batches):
        now[0] = k * send_every
        output = OutputRecord("out", None, orjson.dumps({"offset": k}), 0)
        shipment = await delivery.send([output])
        await acks.put(InFlight([InputRecord("in", 0, k, 990, None, b"{}")], shipment, scored=1, dead_lettered=0))
        await asyncio.sleep(0)
    for k in range(batches):  # each acknowledged 40 ms after it was sent, in order
        now[0] = k * send_every + ack_after
        sink.pending[k].set_result(None)
        await until(lambda k=k: len(acks.progress.acknowledged_offsets) == k + 1, f"batch {k} reported")  # type: ignore[attr-defined]
    running.cancel()
    # Before: about 1 ms (each batch's acknowledgement came 1 ms after the previous one's).
    assert delivery.ack_ms < 10, f"learned {delivery.ack_ms:.1f} ms"
