"""Delivery, the one owner of sending outputs: re-sending while the destination is away, refused
records replaced by dead letters, fatal errors raised, with fakes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence

import orjson
import pytest

import streams.flow.backoff
from streams.errors import DeliveryFailed
from streams.flow.delivery import Delivery
from streams.records import OutputRecord
from tests.fakes import ListSink


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
