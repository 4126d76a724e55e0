"""Exactly-once progress and sink (streams.kafka.transactions) with fake transactional producers."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, ProducerFenced

from streams.errors import Fenced, OutputRefused, TransactionFailed
from streams.kafka.transaction_commits import TransactionCommits
from streams.kafka.transactions import PartitionTransactions, TransactionalSink
from streams.records import InputRecord, OutputRecord, Partition

GROUP = "app.fraud"
TOPIC = "tx"


class FakeBatch:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, key, value, timestamp, headers):
        self.values.append(value)
        return object()

    def close(self) -> None:
        pass


class FakeProducer:
    def __init__(self, transactional_id: str, calls: list[tuple]) -> None:
        self.transactional_id = transactional_id
        self.calls = calls
        self.fail_commit: BaseException | None = None
        self.fail_ack: BaseException | None = None

    def _call(self, *what) -> None:
        self.calls.append((self.transactional_id, *what))

    async def start(self) -> None:
        self._call("start")

    async def stop(self) -> None:
        self._call("stop")

    async def begin_transaction(self) -> None:
        self._call("begin")

    async def commit_transaction(self) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        self._call("commit")

    async def abort_transaction(self) -> None:
        self._call("abort")

    async def send_offsets_to_transaction(self, offsets, group_id) -> None:
        self._call("offsets", dict(offsets), group_id)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future[object]:
        self._call("send", topic, partition, list(batch.values))
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.fail_ack is not None:
            future.set_exception(self.fail_ack)
        else:
            future.set_result(None)
        return future


class Fakes:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.producers: dict[str, FakeProducer] = {}

    def new(self, transactional_id: str) -> FakeProducer:
        producer = FakeProducer(transactional_id, self.calls)
        self.producers[transactional_id] = producer
        return producer

    def of(self, partition: int) -> FakeProducer:
        return self.producers[f"{GROUP}.{TOPIC}.{partition}"]

    def done(self, what: str) -> list[tuple]:
        return [c for c in self.calls if c[1] == what]


def record(partition: int, offset: int) -> InputRecord:
    return InputRecord(TOPIC, partition, offset, 0, b"k", b"{}")


def output(partition: int, value: bytes = b"p", topic: str = "scores") -> OutputRecord:
    return OutputRecord(topic, b"k", value, partition)


async def owning(*partitions: int) -> tuple[Fakes, PartitionTransactions]:
    fakes = Fakes()
    transactions = PartitionTransactions(fakes.new, group_id=GROUP)  # type: ignore[arg-type]
    await transactions.assign({Partition(TOPIC, p) for p in partitions})
    return fakes, transactions


async def test_each_input_partition_gets_its_own_transactional_id_and_an_open_transaction():
    fakes, transactions = await owning(0, 2)
    assert sorted(fakes.producers) == [f"{GROUP}.{TOPIC}.0", f"{GROUP}.{TOPIC}.2"]
    for producer in fakes.producers.values():
        assert [c[1] for c in fakes.calls if c[0] == producer.transactional_id] == ["start", "begin"]
    assert transactions.owned == {Partition(TOPIC, 0), Partition(TOPIC, 2)}


async def test_a_commit_puts_each_partitions_offset_in_its_own_transaction_and_opens_the_next():
    fakes, transactions = await owning(0, 1, 2)
    commits = TransactionCommits(transactions, interval_ms=100)
    assert commits.needs_quiet, "a transaction must hold exactly the acknowledged batches"
    commits.acknowledged([record(0, 5), record(1, 7), record(0, 6)], scored=3, dead_lettered=0)
    fakes.calls.clear()
    await commits.commit()
    assert fakes.done("offsets") == [
        (f"{GROUP}.{TOPIC}.0", "offsets", {TopicPartition(TOPIC, 0): 7}, GROUP),
        (f"{GROUP}.{TOPIC}.1", "offsets", {TopicPartition(TOPIC, 1): 8}, GROUP),
    ]
    assert [c[0] for c in fakes.done("commit")] == [f"{GROUP}.{TOPIC}.0", f"{GROUP}.{TOPIC}.1"]
    assert len(fakes.done("begin")) == 2
    # Partition 2 had nothing new: its transaction stays open, untouched.
    assert not [c for c in fakes.calls if c[0] == f"{GROUP}.{TOPIC}.2"]
    fakes.calls.clear()
    await commits.commit()
    assert fakes.calls == [], "nothing acknowledged since: nothing to commit"


async def test_outputs_go_with_the_producer_of_the_input_partition_they_answer():
    fakes, transactions = await owning(0, 1, 2)
    sink = TransactionalSink(transactions, input_topic=TOPIC)
    await (await sink.send([output(0, b"a"), output(2, b"b"), output(0, b"c"), output(2, b"d", topic="dlq")]))
    sends = fakes.done("send")
    assert (f"{GROUP}.{TOPIC}.0", "send", "scores", 0, [b"a", b"c"]) in sends
    # Input partition 2 -> output partition 2 % 2 == 0, sent by partition 2's producer.
    assert (f"{GROUP}.{TOPIC}.2", "send", "scores", 0, [b"b"]) in sends
    assert (f"{GROUP}.{TOPIC}.2", "send", "dlq", 0, [b"d"]) in sends
    assert len(sends) == 3


async def test_a_rekeyed_output_goes_to_its_keys_partition_in_its_input_partitions_transaction():
    fakes, transactions = await owning(0, 1)
    sink = TransactionalSink(transactions, input_topic=TOPIC)
    routed = [
        OutputRecord("repartition", b"k", b"a", 0, to_partition=1, timestamp=5),
        OutputRecord("repartition", b"k", b"b", 1, to_partition=1, timestamp=6),
        OutputRecord("repartition", b"j", b"c", 0, to_partition=0, timestamp=7),
    ]
    await (await sink.send(routed))
    assert sorted(fakes.done("send")) == [
        (f"{GROUP}.{TOPIC}.0", "send", "repartition", 0, [b"c"]),
        (f"{GROUP}.{TOPIC}.0", "send", "repartition", 1, [b"a"]),
        (f"{GROUP}.{TOPIC}.1", "send", "repartition", 1, [b"b"]),
    ]


async def test_outputs_and_offsets_of_a_partition_no_longer_owned_are_neither_sent_nor_committed():
    fakes, transactions = await owning(0, 1)
    sink = TransactionalSink(transactions, input_topic=TOPIC)
    commits = TransactionCommits(transactions, interval_ms=100)
    await transactions.release({Partition(TOPIC, 1)})
    assert [c[1] for c in fakes.calls if c[0] == f"{GROUP}.{TOPIC}.1"][-2:] == ["abort", "stop"]
    fakes.calls.clear()
    await (await sink.send([output(0), output(1)]))
    assert [c[0] for c in fakes.done("send")] == [f"{GROUP}.{TOPIC}.0"]
    commits.acknowledged([record(0, 1), record(1, 1)], scored=2, dead_lettered=0)
    await commits.commit()
    assert [c[0] for c in fakes.done("offsets")] == [f"{GROUP}.{TOPIC}.0"]


async def test_an_output_over_the_topic_limit_is_refused_and_the_rest_sent_in_the_transaction():
    fakes, transactions = await owning(0)
    sink = TransactionalSink(transactions, input_topic=TOPIC, max_record_bytes={"scores": 200})
    with pytest.raises(OutputRefused) as refused:
        await (await sink.send([output(0, b"x" * 500), output(0, b"ok")]))
    assert [r.value for r, _ in refused.value.refused] == [b"x" * 500]
    assert [c[4] for c in fakes.done("send")] == [[b"ok"]]


async def test_an_output_without_a_key_for_a_compacted_topic_is_refused_not_sent():
    fakes, transactions = await owning(0)
    sink = TransactionalSink(transactions, input_topic=TOPIC, compacted={"scores"})
    keyless = output(0, b"no key")._replace(key=None)
    with pytest.raises(OutputRefused) as refused:
        await (await sink.send([keyless, output(0, b"ok")]))
    assert [(r.value, reason) for r, reason in refused.value.refused] == [
        (b"no key", "scores is compacted: it refuses records without a key")
    ]
    assert [c[4] for c in fakes.done("send")] == [[b"ok"]]


async def test_a_fenced_commit_stops_everything_at_once_and_commits_nothing_more():
    fakes, transactions = await owning(0, 1)
    commits = TransactionCommits(transactions, interval_ms=60_000)
    sink = TransactionalSink(transactions, input_topic=TOPIC)
    fakes.of(1).fail_commit = ProducerFenced()
    commits.acknowledged([record(0, 1), record(1, 1)], scored=2, dead_lettered=0)
    waiting = asyncio.create_task(commits.wait_until_due())
    with pytest.raises(Fenced):
        await commits.commit()
    # The commit timer does not sleep out its interval: the driver stops on the failure now.
    with pytest.raises(Fenced):
        await asyncio.wait_for(waiting, 1)
    fakes.calls.clear()
    commits.acknowledged([record(0, 2)], scored=1, dead_lettered=0)
    with pytest.raises(Fenced):
        await commits.commit()
    with pytest.raises(Fenced):
        await sink.send([output(0)])
    assert not fakes.done("commit") and not fakes.done("send")
    # A stopping zombie that rejoins the group must not fence the partitions' real owner.
    await transactions.assign({Partition(TOPIC, 5)})
    assert not fakes.done("start")


async def test_an_output_not_acknowledged_fails_the_transaction_instead_of_being_sent_again():
    fakes, transactions = await owning(0)
    sink = TransactionalSink(transactions, input_topic=TOPIC)
    fakes.of(0).fail_ack = KafkaTimeoutError()
    acknowledged = await sink.send([output(0)])
    with pytest.raises(TransactionFailed) as failed:
        await acknowledged
    assert not isinstance(failed.value, Fenced) and not failed.value.retriable
    assert transactions.failed is failed.value


async def test_closing_aborts_what_is_open_and_stops_every_producer():
    fakes, transactions = await owning(0, 1)
    fakes.calls.clear()
    await transactions.close()
    assert sorted(c[:2] for c in fakes.calls) == sorted(
        [(f"{GROUP}.{TOPIC}.{p}", what) for p in (0, 1) for what in ("abort", "stop")]
    )
    assert transactions.owned == set()
