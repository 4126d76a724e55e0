"""Avro outputs (``output_format = "avro"``): the schema sluice derives from a pipeline, each output
in the registry's wire format read back by fastavro as its JSON twin (every optional field, NaN,
several outputs, features), the schema registered under ``<topic>-value``, a registry that refuses
it as one line, and ``sluice watch`` reading Avro outputs back."""

from __future__ import annotations

import io
import json

import fastavro
import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.avro_outputs import WireValues, register_outputs, schema_of, subject_of
from app.build import avro_replacement
from app.config import load_config
from app.schema_registry import registry_client
from streams.codecs.avro_outputs import AvroOutputs, avro_name, output_schema
from streams.codecs.avro_scalars import long_bytes, longs_bytes
from streams.codecs.codec import Decoded, EventSchema, TensorField, decode, encode_predictions
from streams.errors import ConfigError
from streams.flow.delivery import Delivery
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.records import InputRecord, OutputRecord
from tests.fakes import ListSink, SumRunner
from tests.one_line import one_line_exit_2
from tests.unit.test_cli import run_cli
from tests.unit.test_config import GOOD, error_for, write

SCHEMA = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))
OPTIONAL = ("features", "role", "fallback", "fallback_reason")
FEATURES = [("count_1h", ()), ("history", (3, 2))]


def records_of(ids: list[object]) -> list[InputRecord]:
    values = [orjson.dumps({"id": event_id, "x": [i, 1]}) for i, event_id in enumerate(ids)]
    return [
        InputRecord("in", i % 2, 10 + i, 1_000 + i, f"k{i}".encode(), v, (("h", b"v"),)) for i, v in enumerate(values)
    ]


def avro_and_json(ids, predictions, *, features=None, extra=None, schema_id=7, key_by_position=False):
    """The same batch encoded as Avro and as JSON: (Avro outputs, their values read back, JSON outputs)."""
    records = records_of(ids)
    decoded = decode(records, SCHEMA)
    avro = AvroOutputs(output_schema("p", FEATURES if features else ()), schema_id)
    common = {
        "topic": "out",
        "model_name": "m",
        "model_version": "2",
        "now_ms": 5_000,
        "features": features,
        "extra": extra,
        "key_by_position": key_by_position,
        "headers_of": lambda record: record.headers,
    }
    written = encode_predictions(records, decoded, np.asarray(predictions), avro=avro, **common)
    plain = encode_predictions(records, decoded, np.asarray(predictions), **common)
    read = [fastavro.schemaless_reader(io.BytesIO(o.value[5:]), avro.parsed, None) for o in written]
    return written, read, plain


def as_json_twin(doc: dict) -> dict:
    """An Avro output as its JSON twin: the optional fields it does not carry left out."""
    return {name: value for name, value in doc.items() if not (name in OPTIONAL and value is None)}


def test_the_schema_is_one_record_of_the_pipeline_with_the_json_outputs_fields_in_their_order():
    schema = output_schema("fraud-v2")
    parsed = fastavro.parse_schema(schema)
    assert parsed["name"] == "sluice.fraud_v2.Prediction"
    names = [f["name"] for f in schema["fields"]]
    assert names == ["id", "prediction", "model", "model_version", "source", "event_ts", "latency_ms", *OPTIONAL[1:]]
    for field in schema["fields"]:
        if field["name"] in OPTIONAL:
            assert field["type"][0] == "null" and field["default"] is None, field
    assert {f["name"]: f["type"] for f in schema["fields"]}["id"] == ["long", "string"]
    with_features = output_schema("fraud", FEATURES)
    (features,) = [f for f in with_features["fields"] if f["name"] == "features"]
    assert features["type"][1]["fields"] == [
        {"name": "count_1h", "type": ["double", "null"]},
        {"name": "history", "type": {"type": "array", "items": {"type": "array", "items": ["double", "null"]}}},
    ]
    assert [avro_name(n) for n in ("fraud", "7eleven", "a.b-c", "")] == ["fraud", "_7eleven", "a_b_c", "_"]


def test_outputs_written_before_features_were_emitted_are_read_by_the_schema_with_them_and_back():
    # Optional fields with a default: emitting features later (or stopping) is a compatible change.
    old, new = output_schema("p"), output_schema("p", FEATURES)
    doc = {"id": "e", "prediction": 0.5, "model": "m", "model_version": "1"}
    doc |= {"source": {"topic": "in", "partition": 0, "offset": 3}, "event_ts": 1, "latency_ms": 2}
    for writer, reader in ((old, new), (new, old)):
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, fastavro.parse_schema(writer), doc)
        buffer.seek(0)
        read = fastavro.schemaless_reader(buffer, fastavro.parse_schema(writer), fastavro.parse_schema(reader))
        assert as_json_twin(read) == doc


def test_a_feature_name_avro_cannot_hold_is_refused_with_its_name():
    with pytest.raises(ValueError, match="feature 'amount-7d' cannot be an Avro field name"):
        output_schema("p", [("amount-7d", ())])


def test_each_output_is_the_wire_format_with_the_registrys_id_and_reads_back_as_its_json_twin():
    written, read, plain = avro_and_json(["e0", 42, "e2"], np.array([0.25, 0.75, 1.5], dtype=np.float32), schema_id=258)
    assert all(o.value[:5] == b"\x00\x00\x00\x01\x02" for o in written), "magic byte, then id 258 big-endian"
    assert [as_json_twin(doc) for doc in read] == [orjson.loads(o.value) for o in plain]
    assert read[1]["id"] == 42 and read[0]["source"] == {"topic": "in", "partition": 0, "offset": 10}
    same = [(o.topic, o.key, o.partition, o.headers) for o in written]
    assert same == [(o.topic, o.key, o.partition, o.headers) for o in plain], "keys, partitions, headers as JSON's"
    keyed, _, plain_keyed = avro_and_json(["e0"], np.array([0.5]), key_by_position=True)
    assert keyed[0].key == plain_keyed[0].key == b"in:0:10"


def test_nan_and_infinity_are_null_as_json_writes_them():
    _, read, plain = avro_and_json(["a", "b"], np.array([np.nan, np.inf]))
    assert [doc["prediction"] for doc in read] == [None, None] == [orjson.loads(o.value)["prediction"] for o in plain]


def test_several_outputs_per_event_are_a_list_of_numbers():
    _, read, plain = avro_and_json(["a", "b"], np.array([[0.1, np.nan], [0.4, 0.6]]))
    assert [as_json_twin(doc) for doc in read] == [orjson.loads(o.value) for o in plain]
    assert read[0]["prediction"] == [pytest.approx(0.1), None]


def test_features_are_a_record_of_numbers_and_lists_of_numbers():
    history = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    history[1, 0, 1] = np.inf
    features = {"count_1h": np.array([3.0, 4.0], dtype=np.float32), "history": history}
    _, read, plain = avro_and_json(["a", "b"], np.array([0.5, 0.6]), features=features)
    assert [as_json_twin(doc) for doc in read] == [orjson.loads(o.value) for o in plain]
    assert read[1]["features"]["history"][0] == [6.0, None]


@pytest.mark.parametrize(
    "extra",
    [{"role": "canary"}, {"role": "fallback", "fallback": True, "fallback_reason": 'champion: "boom" é'}, None],
)
def test_who_scored_an_event_when_not_the_champion_is_carried_and_null_otherwise(extra):
    _, read, plain = avro_and_json(["a"], np.array([0.5]), extra=extra)
    assert as_json_twin(read[0]) == orjson.loads(plain[0].value)
    for name in ("role", "fallback", "fallback_reason"):
        assert read[0][name] == (extra or {}).get(name)


def test_an_integer_id_beyond_avros_long_is_written_as_its_text():
    # JSON ids go up to 2**64 - 1; Avro's long stops at 2**63 - 1 (the README says so).
    _, read, _ = avro_and_json([2**64 - 1, -(2**63), "x"], np.array([0.1, 0.2, 0.3]))
    assert [doc["id"] for doc in read] == [str(2**64 - 1), -(2**63), "x"]


async def test_a_pipeline_writes_avro_outputs_and_json_dead_letters():
    sink = ListSink()
    avro = AvroOutputs(output_schema("p"), 5)
    pipeline = Pipeline(
        name="p",
        schema=SCHEMA,
        runner=SumRunner(),
        sink=sink,
        topics=PipelineTopics(output="out", dead_letter="dlq", avro=avro),
        clock_ms=lambda: 5_000,
    )
    batch = [*records_of(["a", "b"]), InputRecord("in", 0, 99, 1_000, b"k", b"not json")]
    outcome = await pipeline.process(batch)
    assert (outcome.scored, outcome.dead_lettered) == (2, 1)
    outputs = [r for r in sink.records if r.topic == "out"]
    assert [avro.decode(r.value)["prediction"] for r in outputs] == [1.0, 2.0]
    (letter,) = [r for r in sink.records if r.topic == "dlq"]
    assert orjson.loads(letter.value)["error"] == "InvalidJSON", "dead letters stay JSON"


def test_an_avro_output_the_broker_refuses_still_names_its_source_in_its_dead_letter():
    avro = AvroOutputs(output_schema("p"), 5)
    delivery = Delivery(ListSink(), pipeline="p", dead_letter_topic="dlq", max_copy_bytes=1024, clock_ms=lambda: 0)
    (output,) = encode_predictions(
        records_of(["a"]), decode(records_of(["a"]), SCHEMA), np.array([0.5]),
        topic="out", model_name="m", model_version="1", now_ms=5_000, avro=avro,
    )  # fmt: skip
    letter = orjson.loads(avro_replacement(delivery, avro)(output, "too large", 9).value)
    assert letter["source"] == {"topic": "in", "partition": 0, "offset": 10}
    assert letter["output_refused"] is True
    refused_letter = OutputRecord("dlq", b"k", orjson.dumps({"error": "InvalidJSON", "source": {"offset": 1}}), 0)
    assert orjson.loads(avro_replacement(delivery, avro)(refused_letter, "x", 9).value)["error"] == "InvalidJSON"


_longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


@given(
    events=st.lists(
        st.tuples(
            st.one_of(_texts, _longs, st.integers(min_value=2**63, max_value=2**64 - 1)),  # the id
            st.floats(allow_nan=False, allow_infinity=False, width=32),  # the prediction
            # Kafka's timestamps: -1 (none) or from 0 on.
            st.tuples(
                st.sampled_from(["in", "é ∆"]),
                st.integers(0, 2**31 - 1),
                st.integers(0, 2**63 - 1),
                st.integers(-1, 2**63 - 1),
            ),
        ),
        max_size=6,
    ),
    extra=st.sampled_from([None, {"role": "canary"}, {"role": "fallback", "fallback": True, "fallback_reason": "é"}]),
    features=st.booleans(),
)
def test_the_common_case_written_from_templates_is_byte_for_byte_what_fastavro_writes(events, extra, features):
    """One finite prediction per event, no features in the output: written without fastavro, so
    every byte is checked against fastavro's own writer (ids of both kinds, every timestamp)."""
    records = [InputRecord(t, p, o, ts, b"k", b"{}") for _, _, (t, p, o, ts) in events]
    decoded = Decoded(np.arange(len(events)), [event_id for event_id, _, _ in events], [])
    predictions = np.array([p for _, p, _ in events], dtype=np.float32)
    avro = AvroOutputs(output_schema("p", FEATURES if features else ()), 3)
    now = 1_700_000_000_000
    names = {"topic": "out", "model_name": "mé", "model_version": "", "now_ms": now, "extra": extra}
    written = [o.value for o in encode_predictions(records, decoded, predictions, avro=avro, **names)]
    docs = [orjson.loads(o.value) for o in encode_predictions(records, decoded, predictions, **names)]
    for doc in docs:
        doc["latency_ms"] = now - doc["event_ts"]  # JSON's fast path wraps nothing; the same value
        if type(doc["id"]) is int and doc["id"] >= 2**63:
            doc["id"] = str(doc["id"])
    assert written == avro.encode(docs)


@given(st.lists(_longs, max_size=20))
def test_varints_of_a_whole_array_are_each_values_own(values):
    assert longs_bytes(np.array(values, dtype=np.int64)) == [long_bytes(v) for v in values]
    for value in values[:3]:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, "long", value)
        assert buffer.getvalue() == long_bytes(value)


# The config: output_format, its default, and the registry it needs.


def test_outputs_are_json_unless_the_pipeline_says_avro(tmp_path):
    (pipeline,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert pipeline.output_format == "json"
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\noutput_format = "avro"')
    text = text.replace("[pipelines.p]", '[app.schema_registry]\nurl = "http://registry:8081"\n\n[pipelines.p]')
    (pipeline,) = load_config(write(tmp_path, text), environ={}).pipelines
    assert pipeline.output_format == "avro"


def test_avro_outputs_without_a_registry_are_one_line_naming_the_key(tmp_path):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\noutput_format = "avro"')
    assert error_for(tmp_path, text) == (
        f"{tmp_path / 'sluice.toml'}: key 'pipelines.p.output_format' is \"avro\", which needs the schema registry: "
        "add an [app.schema_registry] table with its url"
    )
    bad = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\noutput_format = "protobuf"')
    assert "pipelines.p.output_format" in error_for(tmp_path, bad)


def avro_config(tmp_path, url: str, *, state: str = ""):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\noutput_format = "avro"')
    text = text.replace("[pipelines.p]", f'[app.schema_registry]\nurl = "{url}"\n\n[pipelines.p]')
    return load_config(write(tmp_path, text + state), environ={})


async def test_the_schema_is_registered_under_the_topics_subject_once(tmp_path):
    config = avro_config(tmp_path, "mock://avro-outputs-unit")
    (p,) = config.pipelines
    avro = await register_outputs(config, p, "scores", emit_features=False)
    assert avro is not None
    client = registry_client(config.app.schema_registry)
    latest = await client.get_latest_version(subject_of("scores"))
    assert subject_of("scores") == "scores-value"
    assert latest.schema_id == avro.schema_id
    assert json.loads(latest.schema.schema_str) == schema_of(p, emit_features=False) == output_schema("p")
    again = await register_outputs(config, p, "scores", emit_features=False)
    assert again is not None and again.schema_id == avro.schema_id, "a restart registers the same schema: same id"
    (json_pipeline,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert await register_outputs(config, json_pipeline, "scores", emit_features=False) is None


async def test_a_registry_that_refuses_the_schema_stops_the_start_with_one_line(tmp_path, monkeypatch):
    from confluent_kafka.schema_registry import SchemaRegistryError

    config = avro_config(tmp_path, "mock://avro-outputs-refusing")
    (p,) = config.pipelines

    class Refusing:
        async def register_schema(self, subject, schema):
            raise SchemaRegistryError(409, 409, "Schema being registered is incompatible with an earlier schema\n...")

    monkeypatch.setattr("app.avro_outputs.registry_client", lambda registry: Refusing())
    with pytest.raises(ConfigError) as info:
        await register_outputs(config, p, "scores", emit_features=False)
    assert str(info.value) == (
        f"{config.path}: pipeline p: the schema registry mock://avro-outputs-refusing did not register the outputs' "
        "schema under subject 'scores-value' (output_format = \"avro\"): it answered 409: Schema being registered "
        "is incompatible with an earlier schema ..."
    )


async def test_a_registry_that_cannot_be_reached_stops_the_start_with_one_line(tmp_path):
    from tests.integration.kafka_helpers import free_port

    config = avro_config(tmp_path, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError) as info:
        await register_outputs(config, config.pipelines[0], "scores", emit_features=False)
    message = str(info.value)
    assert "\n" not in message and "subject 'scores-value'" in message and "ConnectError" in message, message


def test_emitted_features_are_in_the_schema_and_a_name_avro_cannot_hold_is_one_line(tmp_path):
    state = "\n[pipelines.p.state]\nttl_s = 60\n[pipelines.p.state.features]\n"
    state += '"n-1h" = { kind = "count", window_s = 3600 }\n'
    (p,) = avro_config(tmp_path, "mock://x", state=state).pipelines
    assert [f["name"] for f in schema_of(p, emit_features=False)["fields"]][-4] == "latency_ms", "none unless emitted"
    with pytest.raises(
        ConfigError, match="pipeline p: output_format = \"avro\" with its features emitted: feature 'n-1h'"
    ):
        schema_of(p, emit_features=True)


# sluice watch reads Avro outputs by the config's registry.


async def test_watch_reads_avro_outputs_by_their_schema_and_anything_else_as_it_is(tmp_path):
    config = avro_config(tmp_path, "mock://avro-outputs-watch")
    avro = await register_outputs(config, config.pipelines[0], "scores", emit_features=False)
    assert avro is not None
    (output,) = encode_predictions(
        records_of(["a"]), decode(records_of(["a"]), SCHEMA), np.array([0.5]),
        topic="scores", model_name="m", model_version="1", now_ms=5_000, avro=avro,
    )  # fmt: skip
    values = WireValues(config.app.schema_registry)
    body, problem = await values.as_json(output.value)
    assert problem is None and body is not None
    assert orjson.loads(body) == {**as_json_twin(avro.decode(output.value)), **dict.fromkeys(OPTIONAL[1:])}
    assert await values.as_json(b'{"id": 1}') == (b'{"id": 1}', None)
    assert await values.as_json(None) == (None, None)
    body, problem = await values.as_json(b"\x00\x00\x0f\x42\x40" + output.value[5:])
    assert body is None and problem is not None and problem.startswith("schema 1000000: the registry mock://")
    body, problem = await values.as_json(output.value[:-3])
    assert body is None and "cannot read the value" in (problem or "")
    unconfigured = WireValues(None)
    assert (await unconfigured.as_json(output.value))[1] == (
        f"written with schema {avro.schema_id} of a registry: add [app.schema_registry] to the config to read it"
    )


# The commands: one line and exit status 2.


def test_a_worker_with_avro_outputs_and_no_registry_stops_with_one_line(tmp_path):
    text = GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\noutput_format = "avro"')
    path = write(tmp_path, text)
    assert one_line_exit_2(run_cli("--config", str(path), "worker")) == (
        f"sluice worker: {path}: key 'pipelines.p.output_format' is \"avro\", which needs the schema registry: "
        "add an [app.schema_registry] table with its url"
    )


def test_a_worker_registering_avro_outputs_in_an_in_memory_registry_stops_with_one_line(tmp_path):
    path = avro_config(tmp_path, "mock://nobody-else-sees-it").path
    line = one_line_exit_2(run_cli("--config", str(path), "worker"))
    assert line.startswith(f"sluice worker: {path}: key 'app.schema_registry.url' is 'mock://nobody-else-sees-it'")


async def test_watch_asks_a_registry_that_did_not_answer_again_at_the_next_value(monkeypatch):
    from confluent_kafka.schema_registry import Schema

    from app import avro_outputs
    from app.config.schema_registry import SchemaRegistryConfig

    schema = {"type": "record", "name": "R", "fields": [{"name": "id", "type": "string"}]}
    answers: list[object] = [ConnectionRefusedError(111, "Connection refused"), Schema(json.dumps(schema), "AVRO")]

    class Flaky:
        async def get_schema(self, schema_id):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    monkeypatch.setattr(avro_outputs, "registry_client", lambda registry: Flaky())
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), {"id": "a"})
    value = b"\x00\x00\x00\x00\x09" + body.getvalue()
    values = WireValues(SchemaRegistryConfig(url="http://127.0.0.1:1"))
    assert (await values.as_json(value))[1] is not None, "the registry away: said, for this value"
    assert await values.as_json(value) == (b'{"id":"a"}', None), "asked again, and read"
