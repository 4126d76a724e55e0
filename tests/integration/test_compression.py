"""Compressed records, as real producers send them, through the real broker.

Inputs come from Kafka's own Java client (the jars the local broker runs, compiled against at
test time) with every codec Kafka has; outputs are produced with ``[app] compression``, and the
broker's log files show which codec each stored batch really has. A batch that cannot be
decoded is made for real too: the broker validates what it is sent, so the test damages a
stored batch in the broker's own log file, as a failing disk would.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c

from app.demo_events import demo_events
from app.topics import ensure_topics
from tests.integration.kafka_helpers import read_topic, run_sluice, running_worker, topics_for, unique, write_config

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# The codec ids a record batch's attributes carry.
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
# Kafka's record batch format (magic 2): where the CRC and the attributes it covers from start,
# and the header's size, after which come the (compressed) records.
CRC_AT, ATTRIBUTES_AT, HEADER_SIZE = 17, 21, 61
JAVA_SOURCE = Path(__file__).parent / "java" / "ProduceDemo.java"
# The jars the producer needs from the broker's: the client, the codecs' libraries, slf4j's API.
JARS = ("kafka-clients-", "lz4-java-", "snappy-java-", "zstd-jni-", "slf4j-api-")


def kafka_libs() -> Path:
    """Where docker/kafka-local caches the broker's jars (its settings, its defaults)."""
    cache = os.environ.get("SLUICE_KAFKA_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sluice" / "kafka"
    )
    return Path(cache) / os.environ.get("KAFKA_VERSION", "4.1.1") / "libs"


def broker_log_dir(topic: str, partition: int) -> Path:
    """The folder where the local broker keeps one partition's log (docker/kafka-local's data folder)."""
    home = os.environ.get("SLUICE_KAFKA_HOME") or str(
        Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "sluice" / "kafka"
    )
    return Path(home) / "data" / f"{topic}-{partition}"


@pytest.fixture(scope="module")
def java_producer(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that runs ProduceDemo, compiled here against the broker's own client jars."""
    javac, java = shutil.which("javac"), shutil.which("java")
    assert javac and java, "a JDK (javac, java) is needed: the broker runs on it (Debian: openjdk-17-jdk-headless)"
    libs = kafka_libs()
    jars = [next(iter(sorted(libs.glob(f"{prefix}*.jar"))), None) for prefix in JARS]
    assert all(jars), f"{libs} lacks one of {JARS}: run docker/kafka-local fetch"
    classes = tmp_path_factory.mktemp("java-classes")
    classpath = os.pathsep.join(str(j) for j in jars)
    subprocess.run([javac, "-d", str(classes), "-cp", classpath, str(JAVA_SOURCE)], check=True, timeout=120)
    return [java, "-cp", f"{classpath}{os.pathsep}{classes}", "ProduceDemo", kafka]


def stored_batches(topic: str, partition: int) -> list[tuple[int, DefaultRecordBatch]]:
    """Every record batch in the broker's log files of one partition, with its byte position in its file."""
    batches = []
    for segment in sorted(broker_log_dir(topic, partition).glob("*.log")):
        data = segment.read_bytes()
        position = 0
        while position + 12 <= len(data):
            (length,) = struct.unpack_from(">i", data, position + 8)
            end = position + 12 + length
            if end > len(data):
                break  # a batch the broker is writing right now
            batch = MemoryRecords(data[position:end]).next_batch()
            assert isinstance(batch, DefaultRecordBatch)
            batches.append((position, batch))
            position = end
    return batches


def codecs_stored(topic: str, partitions: Iterable[int]) -> set[int]:
    return {batch.compression_type for p in partitions for _, batch in stored_batches(topic, p)}


def compressed_as(codec: str, stored: set[int]) -> bool:
    """Batches stored with ``codec``, except any that aiokafka sent uncompressed because the codec
    would not have made them smaller (its rule, for a batch of one short record)."""
    return CODEC_IDS[codec] in stored and stored <= {CODEC_IDS["none"], CODEC_IDS[codec]}


async def test_events_of_every_codec_from_the_java_client_are_scored_and_outputs_compressed_as_configured(
    kafka, tmp_path, java_producer
):
    name = unique("codecs")
    topics = topics_for(name)
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="codecs", partitions=2, app_extra='compression = "zstd"', **topics
    )
    per_codec = 200
    expected: set[str] = set()
    args = []
    for seed, codec in enumerate(CODECS, start=1):
        events = list(demo_events(per_codec, seed=seed))
        expected |= {e.id for e in events}
        lines = tmp_path / f"{codec}.tsv"
        lines.write_bytes(b"".join(e.key + b"\t" + e.value + b"\n" for e in events))
        args.append(f"{codec}={lines}")

    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline codecs: scoring") as worker:
        command = [*java_producer, topics["input_topic"], *args]
        produced = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=180)
        assert produced.returncode == 0, produced.stderr[-4000:]
        assert all(f"{codec}: acknowledged {per_codec}" in produced.stdout for codec in CODECS), produced.stdout
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(expected), within_s=120)
        assert worker.poll() is None, "the worker stopped"

    assert codecs_stored(topics["input_topic"], (0, 1)) == set(CODEC_IDS.values()), "the inputs use every codec"
    scored = {orjson.loads(r.value)["id"] for r in outputs}
    assert scored == expected, f"{len(expected - scored)} events got no prediction"
    assert compressed_as("zstd", codecs_stored(topics["output_topic"], (0, 1))), "outputs follow [app] compression"


@pytest.mark.parametrize("codec", CODECS)
async def test_every_codec_sluice_can_be_configured_to_produce_is_stored_so_and_read_back(kafka, tmp_path, codec):
    from app.config import load_config
    from app.kafka_clients import connection, make_producer

    topic = unique(f"out-{codec}")
    await ensure_topics(kafka, [topic], create=True, partitions=1)
    config = write_config(
        tmp_path, bootstrap=kafka, pipeline="p", app_extra=f'compression = "{codec}"', **topics_for(topic)
    )
    producer = make_producer(connection(load_config(config, environ={})), linger_ms=20)
    await producer.start()
    try:
        values = [orjson.dumps({"n": n, "text": "compressible " * 20}) for n in range(200)]
        await asyncio.gather(*[await producer.send(topic, v, partition=0) for v in values])
    finally:
        await producer.stop()
    records = await read_topic(kafka, topic, expected=len(values), within_s=30)
    assert [r.value for r in records] == values
    assert compressed_as(codec, codecs_stored(topic, (0,)))


async def send_batches(bootstrap: str, topic: str, partition: int, groups: list[list[bytes]]) -> None:
    """Each group of values as one lz4 record batch of its own."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4", max_batch_size=1 << 20)
    await producer.start()
    try:
        for values in groups:
            batch = producer.create_batch()
            for value in values:
                assert batch.append(key=None, value=value, timestamp=None) is not None
            await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def edit_stored_batch(topic: str, partition: int, base_offset: int, edit, *, keep_crc_valid: bool = True) -> None:
    """Change the stored batch at ``base_offset`` in the broker's log file, as a failing disk or a
    careless client would: ``edit(data, start, end)`` changes the bytes of the batch in place."""
    [position] = [p for p, b in stored_batches(topic, partition) if b.base_offset == base_offset]
    segment = sorted(broker_log_dir(topic, partition).glob("*.log"))[0]
    data = bytearray(segment.read_bytes())
    (length,) = struct.unpack_from(">i", data, position + 8)
    end = position + 12 + length
    edit(data, position, end)
    if keep_crc_valid:
        struct.pack_into(">I", data, position + CRC_AT, calc_crc32c(bytes(data[position + ATTRIBUTES_AT : end])))
    with segment.open("r+b") as f:
        f.seek(position)
        f.write(data[position:end])


def damage(topic: str, partition: int, base_offset: int, *, keep_crc_valid: bool) -> None:
    """Overwrite the compressed records of the stored lz4 batch at ``base_offset``: its CRC then
    no longer matches, or (``keep_crc_valid``) it does but lz4 cannot decompress it."""
    ((_, batch),) = [(p, b) for p, b in stored_batches(topic, partition) if b.base_offset == base_offset]
    assert batch.compression_type == CODEC_IDS["lz4"]

    def zero_records(data: bytearray, start: int, end: int) -> None:
        data[start + HEADER_SIZE : end] = bytes(end - start - HEADER_SIZE)

    edit_stored_batch(topic, partition, base_offset, zero_records, keep_crc_valid=keep_crc_valid)


async def test_a_batch_that_cannot_be_decoded_is_skipped_and_named_and_the_worker_goes_on(kafka, tmp_path):
    name = unique("undecodable")
    topics = topics_for(name)
    await ensure_topics(kafka, [topics["input_topic"]], create=True, partitions=2)
    events = [e.value for e in demo_events(240, seed=7)]
    ids = [orjson.loads(v)["id"] for v in events]
    # Partition 0: good, damaged (CRC), good, damaged (codec), good. Partition 1: good.
    sizes = [50, 20, 50, 20, 50]
    groups, start = [], 0
    for size in sizes:
        groups.append(events[start : start + size])
        start += size
    await send_batches(kafka, topics["input_topic"], 0, groups)
    await send_batches(kafka, topics["input_topic"], 1, [events[start:]])
    damage(topics["input_topic"], 0, 50, keep_crc_valid=False)
    damage(topics["input_topic"], 0, 120, keep_crc_valid=True)
    expected = set(ids) - set(ids[50:70]) - set(ids[120:140])

    config = write_config(tmp_path, bootstrap=kafka, pipeline="undecodable", partitions=2, **topics)
    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="pipeline undecodable: scoring") as worker:
        outputs = await read_topic(kafka, topics["output_topic"], expected=len(expected), within_s=120, idle=1.0)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=40, within_s=30, idle=1.0)
        assert worker.poll() is None, "the worker stopped"

    scored = [orjson.loads(r.value)["id"] for r in outputs]
    assert set(scored) == expected, f"missing {sorted(expected - set(scored))[:10]}, extra {set(scored) - expected}"
    # Each skipped record is named by its position, with what the consumer could not do.
    text = log.read_text()
    skipped: dict[int, str] = {}
    pattern = re.escape(topics["input_topic"]) + r"\[0\] offsets (\d+)\.\.(\d+) \(\d+ records\): "
    pattern += r"cannot be decoded \((\w+)"
    for first, last, error in re.findall(pattern, text):
        skipped |= dict.fromkeys(range(int(first), int(last) + 1), error)
    assert skipped == {
        **dict.fromkeys(range(50, 70), "CorruptRecordException"),
        **dict.fromkeys(range(120, 140), "DecompressionError"),
    }
    assert "stopped on an error" not in text
    # And each is accounted for by a dead letter naming its position, like any bad event.
    letters = [orjson.loads(r.value) for r in dead]
    assert {letter["error"] for letter in letters} == {"Undecodable"}
    assert sorted(letter["source"]["offset"] for letter in letters) == [*range(50, 70), *range(120, 140)]
    assert all(letter["source"]["partition"] == 0 for letter in letters)


async def test_a_backfill_over_a_batch_that_cannot_be_decoded_dead_letters_it_and_replays_the_rest(kafka, tmp_path):
    name = unique("undecodable-backfill")
    topics = topics_for(name)
    await ensure_topics(kafka, [topics["input_topic"]], create=True, partitions=2)
    events = [e.value for e in demo_events(150, seed=8)]
    ids = [orjson.loads(v)["id"] for v in events]
    await send_batches(kafka, topics["input_topic"], 0, [events[:40], events[40:60], events[60:100]])
    await send_batches(kafka, topics["input_topic"], 1, [events[100:]])
    damage(topics["input_topic"], 0, 40, keep_crc_valid=False)
    config = write_config(tmp_path, bootstrap=kafka, pipeline="undecodable", partitions=2, **topics)

    out = tmp_path / "scores.jsonl"
    result = await asyncio.to_thread(
        run_sluice, "--config", str(config), "backfill", "--sink", f"file:{out}", "--state-dir", str(tmp_path / "s")
    )
    assert result.returncode == 0, result.stderr
    scored = {orjson.loads(line)["id"] for line in out.read_text().splitlines()}
    assert scored == set(ids) - set(ids[40:60])
    letters = [orjson.loads(line) for line in (tmp_path / "scores.dead-letters.jsonl").read_text().splitlines()]
    assert {letter["error"] for letter in letters} == {"Undecodable"}
    assert sorted(letter["source"]["offset"] for letter in letters) == list(range(40, 60))


async def test_a_record_whose_header_key_is_not_utf8_is_dead_lettered_and_the_worker_goes_on(kafka, tmp_path):
    # Kafka's protocol says header keys are strings; some clients send any bytes, and aiokafka
    # cannot decode such a batch. Made here by editing a stored batch (CRC kept valid).
    name = unique("header-key")
    topics = topics_for(name)
    await ensure_topics(kafka, [topics["input_topic"]], create=True, partitions=1)
    events = [e.value for e in demo_events(21, seed=9)]
    ids = [orjson.loads(v)["id"] for v in events]
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    try:
        for i, value in enumerate(events):
            headers = [("zz-header-key", b"v")] if i == 10 else []
            await (await producer.send(topics["input_topic"], value, partition=0, headers=headers))
    finally:
        await producer.stop()

    def break_header_key(data: bytearray, start: int, end: int) -> None:
        at = data.index(b"zz-header-key", start, end)
        data[at : at + 2] = b"\xff\xfe"

    edit_stored_batch(topics["input_topic"], 0, 10, break_header_key)

    config = write_config(tmp_path, bootstrap=kafka, pipeline="headerkey", partitions=1, **topics)
    with running_worker(config, tmp_path / "worker.log", ready_text="pipeline headerkey: scoring") as worker:
        outputs = await read_topic(kafka, topics["output_topic"], expected=20, within_s=60, idle=1.0)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=1, within_s=30)
        assert worker.poll() is None, "the worker stopped"
    assert {orjson.loads(r.value)["id"] for r in outputs} == set(ids) - {ids[10]}
    [letter] = [orjson.loads(r.value) for r in dead]
    assert (letter["error"], letter["source"]["offset"]) == ("Undecodable", 10)
    assert "UnicodeDecodeError" in letter["reason"]
