"""How output records are checked, grouped and appended to record batches, a batch at a time."""

from __future__ import annotations

from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import given
from hypothesis import strategies as st

from streams.kafka.batches import by_partition, fill, oversized, record_size, target_partition
from streams.records import OutputRecord


def out(partition: int | None, value: bytes = b"v", **more: object) -> OutputRecord:
    return OutputRecord("out", b"k", value, partition, **more)  # type: ignore[arg-type]


def test_a_batch_of_small_records_has_nothing_oversized() -> None:
    assert oversized([out(0), out(1, b"x" * 900)], lambda topic: 1024 * 1024) == []


def test_each_record_over_its_topics_limit_is_named_with_the_limit() -> None:
    big, small = out(0, b"x" * 2000), out(0, b"y")
    refused = oversized([small, big], lambda topic: 1000)
    assert refused == [(big, "the record is over 1000 bytes, the topic's limit")]


def test_headers_count_toward_the_limit() -> None:
    near = out(0, b"x" * 800)
    with_headers = out(0, b"x" * 800, headers=(("trace", b"h" * 300),))
    assert record_size(with_headers) > 1000 >= record_size(near)
    assert oversized([near, with_headers], lambda topic: 1000) == [
        (with_headers, "the record is over 1000 bytes, the topic's limit")
    ]


def test_records_are_grouped_by_partition_each_in_the_order_given() -> None:
    records = [out(1, b"a"), out(0, b"b"), out(1, b"c"), out(0, b"d")]
    groups = by_partition(records, {"out": 2})
    assert list(groups.items()) == [(("out", 1), [records[0], records[2]]), (("out", 0), [records[1], records[3]])]


def test_input_partitions_sharing_an_output_partition_keep_their_records_interleaved_as_given() -> None:
    records = [out(3, b"1"), out(0, b"2"), out(3, b"3"), out(1, b"4")]
    groups = by_partition(records, {"out": 3})
    assert groups == {("out", 0): [records[0], records[1], records[2]], ("out", 1): [records[3]]}


def test_a_batch_from_one_partition_is_one_group() -> None:
    records = [out(5, bytes([i])) for i in range(10)]
    assert by_partition(records, {"out": 4}) == {("out", 1): records}


def test_no_input_partition_leaves_the_choice_to_the_key_partitioner() -> None:
    records = [out(None), out(0), out(None)]
    assert by_partition(records, {"out": 2}) == {("out", None): [records[0], records[2]], ("out", 0): [records[1]]}


def test_rekeyed_records_and_several_topics_go_where_each_says() -> None:
    moved = out(0, to_partition=3)
    other = OutputRecord("dlq", None, b"x", 1)
    groups = by_partition([out(0), moved, other], {"out": 2, "dlq": 4})
    assert groups == {("out", 0): [out(0)], ("out", 1): [moved], ("dlq", 1): [other]}


def test_fill_stops_at_a_full_batch_and_the_next_batch_takes_the_rest() -> None:
    records = [out(0, bytes(1000), headers=(("h", b"1"),)) for _ in range(10)]
    stops, start = [], 0
    while start < len(records):
        start = fill(BatchBuilder(4096, 0), records, start)  # what the producer's create_batch makes
        stops.append(start)
    assert stops[-1] == 10 and len(stops) > 1
    assert all(b > a for a, b in zip([0, *stops], stops, strict=False))


def test_an_empty_batch_takes_a_record_larger_than_itself() -> None:
    assert fill(BatchBuilder(100, 0), [out(0, bytes(1000)), out(0)], 0) == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["out", "dlq"]),
            st.one_of(st.none(), st.integers(0, 5)),
            st.one_of(st.none(), st.integers(0, 5)),
        ),
        max_size=30,
    ),
    st.integers(1, 4),
)
def test_grouping_is_the_per_record_loops_exactly(fields: list[tuple[str, int | None, int | None]], count: int) -> None:
    records = [OutputRecord(topic, b"k", bytes([i]), p, (), to) for i, (topic, p, to) in enumerate(fields)]
    counts = {"out": count, "dlq": count + 1}
    expected: dict[tuple[str, int | None], list[OutputRecord]] = {}
    for record in records:
        expected.setdefault((record.topic, target_partition(record, counts[record.topic])), []).append(record)
    assert list(by_partition(records, counts).items()) == list(expected.items())
