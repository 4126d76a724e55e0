"""Avro and Protobuf events with a schema registry, against the real broker: written by confluent-kafka's
own serializers (not sluice's code), scored live and by a backfill exactly as their JSON twins are, a
schema evolved mid-stream, each malformed kind dead-lettered with its reason, and a registry that
cannot answer making events wait, never dead letters.

The registry is confluent-kafka's in-memory one (``mock://``): no registry server installs on
these machines (the README says so). It lives in one process, so the pipeline runs here, in the
test's process (``PipelineService``, the worker's own service; the backfill's own run), not as a
subprocess.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
from contextlib import asynccontextmanager

import fastavro
import orjson
from confluent_kafka.schema_registry._async.avro import AsyncAvroSerializer
from confluent_kafka.schema_registry._async.protobuf import AsyncProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from app.backfill_run import backfill_run
from app.commands.backfill import checked_run
from app.config import load_config
from app.decision_log import ensure_decisions_topic
from app.demo_events import demo_events
from app.kafka_clients import connection
from app.pipeline_service import PipelineService
from app.rekey_service import RekeyService
from app.schema_registry import registry_client
from app.testing import score_async
from app.topics import ensure_changelog, ensure_repartition, ensure_topics
from streams.codecs import schema_transcode
from streams.errors import RegistryUnavailable
from streams.metrics import PipelineMetrics
from tests.integration.kafka_helpers import (
    free_port,
    produce_raw,
    read_topic,
    running_worker,
    topics_for,
    unique,
    wait_for_log,
    write_config,
)
from tests.integration.test_rekey import unkeyed_events
from tests.integration.test_state import FEATURES
from tests.integration.user_protos import payment_messages

V1 = {
    "type": "record",
    "name": "Payment",
    "namespace": "demo",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "account", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "features", "type": {"type": "array", "items": "double"}},
    ],
}
# Backward compatible: a field added with a default (the registry's default rule accepts it).
V2 = {**V1, "fields": [*V1["fields"], {"name": "channel", "type": "string", "default": "web"}]}


def configs(tmp_path, kafka, topics, registry_url: str, name: str, fmt: str = "avro"):
    avro = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline=name,
        extra=f'format = "{fmt}"\n',
        app_extra=f'schema_registry = {{ url = "{registry_url}" }}\n',
        **topics,
    )
    (tmp_path / "json").mkdir()
    twin = write_config(tmp_path / "json", bootstrap=kafka, pipeline=name, **topics)
    return avro, twin


async def create_topics(config_path, name: str) -> None:
    """What the worker's start-up checks create: the pipeline's topics and the decisions topic."""
    config = load_config(config_path)
    await ensure_topics(connection(config), config.pipeline(name).topics, create=True, partitions=3)
    await ensure_decisions_topic(connection(config), config.app.decisions_topic, create=True)


@asynccontextmanager
async def running(config_path, name: str):
    """The worker's pipeline service for ``name``, in this process, started and stopped."""
    config = load_config(config_path)
    service = PipelineService(config, config.pipeline(name))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def written(config_path, topic: str, events, schemas) -> list[tuple[bytes, bytes]]:
    """Each event's value as confluent-kafka's serializer writes it, by its schema (in turn)."""
    client = registry_client(load_config(config_path).app.schema_registry)
    serializers = [await AsyncAvroSerializer(client, schema_str=json.dumps(s)) for s in schemas]
    context = SerializationContext(topic, MessageField.VALUE)
    out = []
    for i, event in enumerate(events):
        doc = orjson.loads(event.value)
        out.append((event.key, await serializers[i * len(schemas) // len(events)](doc, context)))
    return out


async def live_and_backfill(kafka, tmp_path, config_path, name, topics, records, malformed, expected):
    """``records`` (with ``malformed`` in the middle) scored by the worker's pipeline service, then
    replayed by a backfill: the outputs must equal ``expected`` (their JSON twins' scores) both ways.
    Returns the dead letters, by source offset."""
    await create_topics(config_path, name)
    half = len(records) // 2
    await produce_raw(kafka, topics["input_topic"], records[:half] + malformed + records[half:])
    async with running(config_path, name):
        served = await read_topic(kafka, topics["output_topic"], expected=len(records), within_s=90)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=len(malformed), within_s=30)
    bodies = {orjson.loads(r.value)["id"]: orjson.loads(r.value)["prediction"] for r in served}
    assert bodies.keys() == expected.keys()
    assert all(abs(bodies[i] - expected[i]) < 1e-6 for i in expected), "the same features, the same scores"

    run, specs = await checked_run(
        load_config(config_path), name, None, f"file:{tmp_path / 'history.jsonl'}", None, None, None, "1/1",
        tmp_path / "state",
    )  # fmt: skip
    summary = await backfill_run(load_config(config_path), run, specs)
    assert (summary.scored, summary.dead_lettered) == (len(records), len(malformed))
    replayed = [orjson.loads(line) for line in (tmp_path / "history.jsonl").read_bytes().splitlines()]
    history = {d["id"]: d["prediction"] for d in replayed if "prediction" in d}
    assert all(abs(history[i] - bodies[i]) < 1e-6 for i in expected), "a backfill scores history as live did"
    letters = sorted((orjson.loads(r.value) for r in dead), key=lambda d: d["source"]["offset"])
    assert all(d.get("value_base64") or d.get("value") for d in letters), "the bytes the topic held"
    return letters


async def test_avro_events_score_live_and_by_backfill_as_their_json_twins_across_a_schema_change(kafka, tmp_path):
    name = "avro"
    topics = topics_for(unique("avro"))
    avro_config, json_config = configs(tmp_path, kafka, topics, f"mock://{unique('registry')}", name)
    events = list(demo_events(300, seed=61))
    expected = (await score_async(json_config, name, [e.value for e in events])).scores()
    records = await written(avro_config, topics["input_topic"], events, [V1, V2])
    assert len({v[1:5] for _, v in records}) == 2, "two schema ids: the schema evolved mid-stream"
    good = records[0][1]
    malformed = [
        (b"k", events[0].value),  # JSON on an Avro topic: no magic byte
        (b"k", b"\x00" + struct.pack(">I", 987_654) + good[5:]),  # an id the registry does not have
        (b"k", good[:-6]),  # truncated
        (b"k", good + b"\x01\x02"),  # bytes left over: another schema's record
    ]
    letters = await live_and_backfill(kafka, tmp_path, avro_config, name, topics, records, malformed, expected)
    assert {d["error"] for d in letters} == {"NotWireFormat", "UnknownSchema", "Truncated", "SchemaMismatch"}
    unknown = next(d for d in letters if d["error"] == "UnknownSchema")
    assert "schema 987654" in unknown["reason"]


# The features one record deeper: read with ``field = ["payment", "features"]``.
NESTED = {
    "type": "record",
    "name": "Envelope",
    "namespace": "demo",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "ts", "type": "long"},
        {
            "name": "payment",
            "type": {
                "type": "record",
                "name": "Payment",
                "fields": [
                    {"name": "account", "type": "string"},
                    {"name": "features", "type": {"type": "array", "items": "double"}},
                ],
            },
        },
    ],
}


async def test_avro_events_with_their_features_in_a_nested_record_score_as_their_json_twins(kafka, tmp_path):
    name = "nested"
    topics = topics_for(unique("nested"))
    registry = f"mock://{unique('registry')}"
    avro_config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline=name,
        inputs='[{ field = ["payment", "features"], shape = [32] }]',
        extra='format = "avro"\n',
        app_extra=f'schema_registry = {{ url = "{registry}" }}\n',
        **topics,
    )
    (tmp_path / "json").mkdir()
    json_config = write_config(tmp_path / "json", bootstrap=kafka, pipeline=name, **topics)
    events = list(demo_events(200, seed=67))
    expected = (await score_async(json_config, name, [e.value for e in events])).scores()
    client = registry_client(load_config(avro_config).app.schema_registry)
    serialize = await AsyncAvroSerializer(client, schema_str=json.dumps(NESTED))
    context = SerializationContext(topics["input_topic"], MessageField.VALUE)
    records = []
    for event in events:
        doc = orjson.loads(event.value)
        payment = {"account": doc["account"], "features": doc["features"]}
        envelope = {"id": doc["id"], "ts": doc["ts"], "payment": payment}
        records.append((event.key, await serialize(envelope, context)))
    flat = await AsyncAvroSerializer(client, schema_str=json.dumps(V1))  # the features not where the config says
    stray = {k: orjson.loads(events[0].value)[k] for k in ("id", "account", "ts", "features")}
    malformed = [(b"k", await flat(stray, context))]
    letters = await live_and_backfill(kafka, tmp_path, avro_config, name, topics, records, malformed, expected)
    assert [(d["error"], d["reason"]) for d in letters] == [("MissingField", "field 'payment.features' is missing")]


async def test_while_the_registry_cannot_answer_valid_events_wait_and_none_is_dead_lettered(
    kafka, tmp_path, monkeypatch
):
    name = "avrodown"
    topics = topics_for(unique("avro-down"))
    avro_config, _ = configs(tmp_path, kafka, topics, f"mock://{unique('registry')}", name)
    events = list(demo_events(60, seed=62))
    await create_topics(avro_config, name)
    await produce_raw(kafka, topics["input_topic"], await written(avro_config, topics["input_topic"], events, [V1]))

    # The in-memory client failing as a registry does when it cannot be reached, then answering.
    monkeypatch.setattr(schema_transcode, "RETRY_FIRST_S", 0.05)
    from app import schema_registry

    real_fetch = schema_registry.RegistryLookup.fetch
    failing = asyncio.Event()
    refused_thrice = asyncio.Event()
    calls = {"n": 0}

    async def flaky(self, schema_id):
        calls["n"] += 1
        if calls["n"] >= 3:
            refused_thrice.set()
        if not failing.is_set():
            raise RegistryUnavailable("ConnectError: [Errno 111] Connection refused")
        return await real_fetch(self, schema_id)

    monkeypatch.setattr(schema_registry.RegistryLookup, "fetch", flaky)
    async with running(avro_config, name):
        await asyncio.wait_for(refused_thrice.wait(), 60)  # the worker asked, and was refused, several times
        assert not await read_topic(kafka, topics["dead_letter_topic"], expected=1, within_s=1)
        failing.set()
        served = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=60)
    assert len({orjson.loads(r.value)["id"] for r in served}) == len(events)
    assert not await read_topic(kafka, topics["dead_letter_topic"], expected=1, within_s=1)


async def test_a_worker_whose_registry_refuses_connections_says_why_and_dead_letters_nothing(kafka, tmp_path):
    name = "avrorefused"
    topics = topics_for(unique("avro-refused"))
    port = free_port()  # nothing listens there: every connection is refused
    config = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline=name,
        extra='format = "avro"\n',
        app_extra=f'schema_registry = {{ url = "http://127.0.0.1:{port}", timeout_ms = 500 }}\n',
        **topics,
    )
    events = list(demo_events(20, seed=63))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(V1), orjson.loads(events[0].value))
    value = b"\x00" + struct.pack(">I", 1) + body.getvalue()
    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text=f"pipeline {name}: ready") as worker:
        await produce_raw(kafka, topics["input_topic"], [(e.key, value) for e in events])
        wait_for_log(log, "the schema registry cannot be reached", proc=worker, timeout=60)
        assert not await read_topic(kafka, topics["dead_letter_topic"], expected=1, within_s=2)
        assert not await read_topic(kafka, topics["output_topic"], expected=1, within_s=0.5)
    text = log.read_text()
    assert "none is dead-lettered for it" in text and "Connect" in text, "the log says why, in words"


async def written_protobuf(config_path, topic: str, events, versions) -> list[tuple[bytes, bytes]]:
    """Each event as confluent-kafka's Protobuf serializer writes it: the user's message classes
    (``tests.integration.user_protos``, as protoc generates them), the imported file registered as
    a reference, the message named by its index in the file (the second message: ``[1]``)."""
    client = registry_client(load_config(config_path).app.schema_registry)
    conf = {"use.deprecated.format": False}
    serializers = [(cls, await AsyncProtobufSerializer(cls, client, conf)) for cls in versions]
    context = SerializationContext(topic, MessageField.VALUE)
    out = []
    for i, event in enumerate(events):
        doc = orjson.loads(event.value)
        cls, serialize = serializers[i * len(versions) // len(events)]
        message = cls(id=doc["id"], account=doc["account"], ts=doc["ts"], features=doc["features"], channel=1)
        message.at.FromMilliseconds(doc["ts"])
        out.append((event.key, await serialize(message, context)))
    return out


async def test_protobuf_events_score_live_and_by_backfill_as_their_json_twins_across_a_schema_change(kafka, tmp_path):
    name = "proto"
    topics = topics_for(unique("proto"))
    proto_config, json_config = configs(tmp_path, kafka, topics, f"mock://{unique('registry')}", name, "protobuf")
    events = list(demo_events(300, seed=64))
    expected = (await score_async(json_config, name, [e.value for e in events])).scores()
    records = await written_protobuf(proto_config, topics["input_topic"], events, payment_messages())
    assert len({v[1:5] for _, v in records}) == 2, "two schema ids: the schema evolved mid-stream"
    good = records[0][1]
    assert good[5:7] == b"\x02\x02", "the message's indexes: one index, 1 (zigzag varints)"
    malformed = [
        (b"k", events[0].value),  # JSON on a Protobuf topic: no magic byte
        (b"k", b"\x00" + struct.pack(">I", 987_655) + good[5:]),  # an id the registry does not have
        (b"k", good[: len(good) // 2]),  # cut inside its features
        (b"k", good[:5] + b"\x02\x0a" + good[7:]),  # a message index the file does not have
    ]
    letters = await live_and_backfill(kafka, tmp_path, proto_config, name, topics, records, malformed, expected)
    assert [d["error"] for d in letters] == ["NotWireFormat", "UnknownSchema", "SchemaMismatch", "SchemaMismatch"]
    assert "schema 987655" in letters[1]["reason"]
    assert "demo.Payment" in letters[2]["reason"] and "truncated" in letters[2]["reason"]
    assert "no message at indexes [5]" in letters[3]["reason"]


# The re-keying tests' events (tests.integration.test_rekey), in Avro: keyed by their ``acct`` field.
ACCOUNT_EVENT = {
    "type": "record",
    "name": "AccountEvent",
    "namespace": "demo",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "features", "type": {"type": "array", "items": "double"}},
        {"name": "amount", "type": "double"},
        {"name": "foreign", "type": "boolean"},
        {"name": "merchant", "type": "long"},
        {"name": "acct", "type": "string"},
    ],
}


async def test_avro_events_keyed_by_a_field_are_rekeyed_in_their_wire_format_and_live_equals_backfill(kafka, tmp_path):
    name = "avrokeyed"
    topics = topics_for(unique("avro-keyed"))
    app_id = unique(f"{name}-app")
    registry = f"mock://{unique('registry')}"
    config_path = write_config(
        tmp_path,
        bootstrap=kafka,
        pipeline=name,
        extra='format = "avro"\nemit_features = true\ncommit_interval_ms = 300\n'
        + FEATURES.format(name=name, store='key_field = "acct"'),
        app_extra=f'schema_registry = {{ url = "{registry}" }}\n',
        app_id=app_id,
        **topics,
    )
    config = load_config(config_path)
    p = config.pipeline(name)
    assert p.rekey is not None
    events = unkeyed_events(400, seed=65)
    client = registry_client(config.app.schema_registry)
    serialize = await AsyncAvroSerializer(client, schema_str=json.dumps(ACCOUNT_EVENT))
    context = SerializationContext(topics["input_topic"], MessageField.VALUE)
    values = [await serialize(orjson.loads(value), context) for _, value, _ in events]
    conn = connection(config)
    await ensure_topics(conn, p.topics, create=True, partitions=3)
    await ensure_repartition(conn, p.rekey.topic, p.rekey.source_topic, create=True, timeout_s=15.0)
    await ensure_changelog(conn, p.changelog_topic, p.input_topics[0], create=True, timeout_s=15.0)
    await ensure_decisions_topic(conn, config.app.decisions_topic, create=True)
    # Unkeyed (spread at random), one JSON value among them: a dead letter at the re-keying stage.
    await produce_raw(kafka, topics["input_topic"], [(None, v) for v in values[:200]] + [(None, b'{"acct": "a"}')])
    await produce_raw(kafka, topics["input_topic"], [(None, v) for v in values[200:]])

    rekey = RekeyService(config, p, PipelineMetrics(f"{name}-rekey"))
    service = PipelineService(config, p, rekey=rekey)
    await service.start()
    try:
        served = await read_topic(kafka, topics["output_topic"], expected=len(events), within_s=120, idle=1)
        dead = await read_topic(kafka, topics["dead_letter_topic"], expected=1, within_s=30)
    finally:
        await service.stop()
    routed = await read_topic(kafka, p.rekey.topic, expected=len(events), within_s=30)
    assert {r.value for r in routed} == set(values), "routed as written: the Avro wire format, untouched"
    key_of = {v: orjson.loads(e[1])["acct"].encode() for v, e in zip(values, events, strict=True)}
    assert all(r.key == key_of[r.value] for r in routed), "each keyed by its acct field"
    [letter] = [orjson.loads(r.value) for r in dead]
    assert letter["error"] == "NotWireFormat" and letter["source"]["topic"] == topics["input_topic"]
    live = {orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in served}
    assert live.keys() == {orjson.loads(v)["id"] for _, v, _ in events}

    run, specs = await checked_run(
        config, name, None, f"file:{tmp_path / 'history.jsonl'}", None, None, None, "1/1", tmp_path / "state", True
    )
    summary = await backfill_run(config, run, specs)
    assert summary.scored == len(events)
    replayed = [orjson.loads(line) for line in (tmp_path / "history.jsonl").read_bytes().splitlines()]
    for body in replayed:
        assert body["features"] == live[body["id"]]["features"], "per-key features rebuilt by the replay"
        assert abs(body["prediction"] - live[body["id"]]["prediction"]) < 1e-6
