"""``[app.schema_registry]`` and a pipeline's ``format`` (app/config/schema_registry.py, app/schema_registry.py)."""

from __future__ import annotations

import base64

import pytest
from confluent_kafka.schema_registry import RegisteredSchema, Schema, SchemaReference
from confluent_kafka.schema_registry.error import SchemaRegistryError
from google.protobuf import descriptor_pb2

from app.config import load_config
from app.schema_registry import RegistryLookup, refuse_in_memory
from streams.codecs.schema_transcode import WriterSchema
from streams.errors import ConfigError, RegistryUnavailable
from tests.unit.test_config import GOOD, error_for, write


def with_registry(registry: str, pipeline_keys: str = 'format = "avro"\n') -> str:
    head, sep, rest = GOOD.partition("[pipelines.p.model]")
    app_head, app_sep, app_rest = head.partition("[pipelines.p]")
    return app_head + registry + "\n" + app_sep + app_rest + pipeline_keys + "\n" + sep + rest


def test_a_registry_and_an_avro_pipeline(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    text = with_registry(
        '[app.schema_registry]\nurl = "https://registry:8081/"\nusername_env = "U"\npassword_env = "P"\n'
        'ca_file = "ca.pem"\ntimeout_ms = 2000\n'
    )
    config = load_config(write(tmp_path, text), environ={})
    registry = config.app.schema_registry
    assert registry is not None and registry.url == "https://registry:8081" and registry.ca_file == ca
    assert (registry.username_env, registry.password_env, registry.timeout_ms) == ("U", "P", 2000)
    assert config.pipelines[0].format == "avro"


def test_json_stays_the_default_and_needs_no_registry(tmp_path):
    (p,) = load_config(write(tmp_path, GOOD), environ={}).pipelines
    assert p.format == "json"


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("", 'pipeline p reads format = "avro", which needs the schema registry: add an [app.schema_registry]'),
        ('[app.schema_registry]\nurl = "registry:8081"\n', "'app.schema_registry.url' has value 'registry:8081'"),
        ('[app.schema_registry]\nurl = "mock://"\n', "'app.schema_registry.url'"),
        (
            '[app.schema_registry]\nurl = "http://r"\nusername_env = "U"\n',
            "set both 'app.schema_registry.username_env'",
        ),
        (
            '[app.schema_registry]\nurl = "http://r"\nusername_env = "U"\npassword_env = "P"\ntoken_env = "T"\n',
            "exclude each other",
        ),
        ('[app.schema_registry]\nurl = "http://r"\nca_file = "sluice.toml"\n', "use an https:// address"),
        ('[app.schema_registry]\nurl = "http://r"\nurll = "x"\n', "unknown key 'app.schema_registry.urll'"),
    ],
)
def test_a_wrong_registry_names_what_to_fix(tmp_path, registry, expected):
    assert expected in error_for(tmp_path, with_registry(registry))


def test_an_unknown_format_names_the_formats(tmp_path):
    message = error_for(tmp_path, with_registry("", 'format = "protobuf3"\n'))
    assert "'pipelines.p.format'" in message and "avro" in message


def test_an_in_memory_registry_is_refused_for_a_command_that_runs_alone(tmp_path):
    config = load_config(write(tmp_path, with_registry('[app.schema_registry]\nurl = "mock://t"\n')), environ={})
    with pytest.raises(ConfigError, match="sluice worker needs a registry server's http"):
        refuse_in_memory(config, "worker")


class FakeClient:
    def __init__(self, answer):
        self.answer = answer

    async def get_schema(self, schema_id, fmt=None):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (SchemaRegistryError(404, 40403, "Schema not found"), None),
        (SchemaRegistryError(404, -1, "Unknown Schema Registry Error: <html>Not Found</html>"), RegistryUnavailable),
        (SchemaRegistryError(401, 40101, "Unauthorized"), RegistryUnavailable),
        (SchemaRegistryError(500, 50001, "Error in the backend data store"), RegistryUnavailable),
        (ConnectionRefusedError(111, "Connection refused"), RegistryUnavailable),
        (Schema("", "AVRO"), RegistryUnavailable),
        (Schema('"string"', "AVRO"), WriterSchema("AVRO", '"string"')),
    ],
)
async def test_only_the_registrys_schema_not_found_is_the_events_fault(answer, expected):
    lookup = RegistryLookup(FakeClient(answer))
    if expected is RegistryUnavailable:
        with pytest.raises(RegistryUnavailable):
            await lookup.fetch(7)
    else:
        assert await lookup.fetch(7) == expected


class FakeProtobufRegistry:
    """Serialized Protobuf schemas by id, and by subject and version for those imported."""

    def __init__(self, schemas, versions):
        self.schemas, self.versions, self.asked = schemas, versions, []

    async def get_schema(self, schema_id, fmt=None):
        self.asked.append(fmt)
        return self.schemas[schema_id]

    async def get_version(self, subject, version, deleted=False, fmt=None):
        self.asked.append(fmt)
        if (subject, version) not in self.versions:
            raise SchemaRegistryError(404, 40401, "Subject not found")
        return RegisteredSchema(subject, version, 1, None, self.versions[subject, version])


def proto_text(name: str) -> str:
    return base64.b64encode(descriptor_pb2.FileDescriptorProto(name=name).SerializeToString()).decode()


async def test_a_protobuf_schema_comes_serialized_with_its_imports_each_after_its_own():
    ref = SchemaReference
    main = Schema(proto_text("m"), "PROTOBUF", [ref("a.proto", "a", 1), ref("google/protobuf/timestamp.proto", "t", 1)])
    registry = FakeProtobufRegistry(
        {7: main, 8: Schema(proto_text("m"), "PROTOBUF", [ref("gone.proto", "gone", 3)])},
        {
            ("a", 1): Schema(proto_text("a"), "PROTOBUF", [ref("b.proto", "b", 2)]),
            ("b", 2): Schema(proto_text("b"), "PROTOBUF"),
        },
    )
    lookup = RegistryLookup(registry, serialized=True)
    found = await lookup.fetch(7)
    assert [name for name, _ in found.references] == ["b.proto", "a.proto"], (
        "imported files first, known types not asked"
    )
    assert set(registry.asked) == {"serialized"}
    missing = await lookup.fetch(8)
    assert missing.references == (("gone.proto", None),), (
        "a missing import is the schema's fault: its events are dead letters"
    )


async def test_a_registry_answering_proto_source_instead_of_serialized_is_the_registrys_fault():
    source = 'syntax = "proto3"; message Payment { string id = 1; }'
    lookup = RegistryLookup(FakeClient(Schema(source, "PROTOBUF")), serialized=True)
    with pytest.raises(RegistryUnavailable, match="format=serialized"):
        await lookup.fetch(7)
