from __future__ import annotations

from pathlib import Path

import pytest

from app.config import load_config
from streams.errors import ConfigError

GOOD = """
[app]
id = "t"
broker = "kafka://127.0.0.1:9092"

[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"

[pipelines.p.model]
demo = "fraud-mlp"

[pipelines.p.features]
inputs = [{ field = "features", shape = [32] }]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message, "every config error names the file"
    return message


def test_the_shipped_config_loads():
    config = load_config(Path(__file__).parents[2] / "config" / "sluice.toml", environ={})
    assert [p.name for p in config.pipelines] == ["fraud"]
    assert config.pipelines[0].model.demo == "fraud-mlp"


def test_the_shipped_transformer_config_loads():
    config = load_config(Path(__file__).parents[2] / "config" / "transformer.toml", environ={})
    (pipeline,) = config.pipelines
    assert pipeline.model.demo == "fraud-transformer"
    assert pipeline.input_shapes == [(32,), (16, 4)]
    # The history comes from per-key state: the events carry the three numbers it keeps.
    assert [f.field for f in pipeline.schema.inputs] == ["features", "amount", "merchant_risk", "foreign"]
    assert pipeline.state is not None and pipeline.state.fields == ("amount", "merchant_risk", "foreign")


def test_a_minimal_config_gets_documented_defaults(tmp_path):
    config = load_config(write(tmp_path, GOOD), environ={})
    p = config.pipeline("p")
    assert p.input_topics == ("in",)
    assert p.max_batch_size == 512
    assert p.schema.id_field == "id"
    assert p.schema.inputs[0].shape == (32,)
    assert config.app.device == "auto"
    assert config.bootstrap_servers == "127.0.0.1:9092"


def test_the_broker_environment_variable_overrides_the_file(tmp_path):
    config = load_config(write(tmp_path, GOOD), environ={"SLUICE_BROKER": "kafka://10.1.2.3:9094"})
    assert config.bootstrap_servers == "10.1.2.3:9094"


def test_config_path_comes_from_the_environment_when_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_CONFIG", str(write(tmp_path, GOOD)))
    assert load_config(environ={}).app.id == "t"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_not_toml(tmp_path):
    assert "not valid TOML" in error_for(tmp_path, "[app\nid=")


def test_unknown_key(tmp_path):
    message = error_for(tmp_path, GOOD.replace('id = "t"', 'id = "t"\nbrokers = "x"'))
    assert "unknown key 'app.brokers'" in message


def test_unknown_key_in_a_pipeline(tmp_path):
    message = error_for(tmp_path, GOOD.replace('output_topic = "out"', 'output_topic = "out"\nbatch = 3'))
    assert "unknown key 'pipelines.p.batch'" in message


def test_wrong_type(tmp_path):
    message = error_for(
        tmp_path,
        GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\nmax_batch_size = "big"'),
    )
    assert "key 'pipelines.p.max_batch_size' has value 'big': expected an integer from 1 to 65,536" in message


def test_a_boolean_is_not_a_number(tmp_path):
    message = error_for(
        tmp_path,
        GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\nmax_batch_size = true'),
    )
    assert "pipelines.p.max_batch_size" in message


def test_negative_number(tmp_path):
    message = error_for(tmp_path, GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\npoll_ms = -5'))
    assert "key 'pipelines.p.poll_ms' has value -5: expected an integer from 1 to 60,000" in message


def test_missing_topic(tmp_path):
    message = error_for(tmp_path, GOOD.replace('output_topic = "out"\n', ""))
    assert "key 'pipelines.p.output_topic' is missing" in message


def test_empty_input_topics(tmp_path):
    message = error_for(tmp_path, GOOD.replace('["in"]', "[]"))
    assert "pipelines.p.input_topics" in message
    assert "non-empty list" in message


def test_no_pipeline(tmp_path):
    assert "no pipeline" in error_for(tmp_path, '[app]\nid = "t"\n')


def test_model_needs_exactly_one_source(tmp_path):
    message = error_for(tmp_path, GOOD.replace('demo = "fraud-mlp"', 'demo = "fraud-mlp"\ntorchscript = "m.pt"'))
    assert "exactly one of" in message
    assert "pipelines.p.model" in message


def test_model_class_needs_weights(tmp_path):
    message = error_for(tmp_path, GOOD.replace('demo = "fraud-mlp"', 'class = "models.demo:FraudMLP"'))
    assert "pipelines.p.model.state_dict" in message


def test_model_paths_are_relative_to_the_config_file(tmp_path):
    config = load_config(write(tmp_path, GOOD.replace('demo = "fraud-mlp"', 'torchscript = "m.pt"')), environ={})
    assert config.pipeline("p").model.torchscript == tmp_path / "m.pt"


def test_bad_feature_shape(tmp_path):
    message = error_for(tmp_path, GOOD.replace("shape = [32]", "shape = [0]"))
    assert "pipelines.p.features.inputs[0].shape" in message


def test_bad_device(tmp_path):
    message = error_for(tmp_path, GOOD.replace('id = "t"', 'id = "t"\ndevice = "tpu"'))
    assert "key 'app.device' has value 'tpu'" in message


def test_output_compression_defaults_to_none_and_must_be_a_kafka_codec(tmp_path):
    assert load_config(write(tmp_path, GOOD), environ={}).app.compression == "none"
    zstd = load_config(write(tmp_path, GOOD.replace('id = "t"', 'id = "t"\ncompression = "zstd"')), environ={})
    assert zstd.app.compression == "zstd"
    message = error_for(tmp_path, GOOD.replace('id = "t"', 'id = "t"\ncompression = "brotli"'))
    assert (
        "key 'app.compression' has value 'brotli': expected one of ['none', 'gzip', 'snappy', 'lz4', 'zstd']" in message
    )


def test_budget_keys_have_defaults_and_are_validated(tmp_path):
    p = load_config(write(tmp_path, GOOD), environ={}).pipeline("p")
    assert (p.latency_budget_ms, p.deadline_from, p.late_events) == (50.0, "event", "score")
    message = error_for(
        tmp_path, GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\nlatency_budget_ms = -5')
    )
    assert "key 'pipelines.p.latency_budget_ms' has value -5: expected a number > 0" in message


def test_deadline_source_must_be_event_or_arrival(tmp_path):
    message = error_for(
        tmp_path, GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\ndeadline_from = "now"')
    )
    assert "key 'pipelines.p.deadline_from' has value 'now': expected one of ['event', 'arrival']" in message


def test_late_policy_must_be_known(tmp_path):
    message = error_for(
        tmp_path, GOOD.replace('dead_letter_topic = "dlq"', 'dead_letter_topic = "dlq"\nlate_events = "drop"')
    )
    assert "pipelines.p.late_events" in message
    assert "['score', 'dead_letter']" in message


def _security(table: str) -> str:
    return GOOD.replace(
        'broker = "kafka://127.0.0.1:9092"\n', f'broker = "kafka://127.0.0.1:9092"\n\n[app.security]\n{table}\n'
    )


SASL_KEYS = 'sasl_mechanism = "SCRAM-SHA-256"\nsasl_username_env = "U"\nsasl_password_env = "P"'


@pytest.mark.parametrize("protocol", [None, "PLAINTEXT", "SSL"])
def test_sasl_settings_without_a_sasl_protocol_are_an_error_not_ignored(tmp_path, protocol):
    # The user believes they authenticate; the connection would not even try.
    table = (f'protocol = "{protocol}"\n' if protocol else "") + SASL_KEYS
    message = error_for(tmp_path, _security(table))
    assert (
        "key(s) 'app.security.sasl_mechanism', 'app.security.sasl_username_env', 'app.security.sasl_password_env' "
        f"would be ignored: key 'app.security.protocol' is '{protocol or 'PLAINTEXT'}', which does not use SASL; "
        "set it to 'SASL_PLAINTEXT' or 'SASL_SSL', or remove those keys"
    ) in message


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("key", ["ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_env"])
def test_tls_settings_without_a_tls_protocol_are_an_error_not_ignored(tmp_path, protocol, key):
    (tmp_path / "x.pem").write_text("")
    table = f'protocol = "{protocol}"\n{key} = "x.pem"'
    if protocol == "SASL_PLAINTEXT":
        table += "\n" + SASL_KEYS
    message = error_for(tmp_path, _security(table))
    assert (
        f"key(s) 'app.security.{key}' would be ignored: key 'app.security.protocol' is '{protocol}', "
        "which does not use TLS; set it to 'SSL' or 'SASL_SSL', or remove those keys"
    ) in message


def test_hostname_checking_off_without_tls_is_an_error_too(tmp_path):
    message = error_for(tmp_path, _security("ssl_check_hostname = false"))
    assert "key(s) 'app.security.ssl_check_hostname' would be ignored" in message


@pytest.mark.parametrize("key", ["ssl_keyfile", "ssl_key_password_env"])
def test_a_client_key_without_its_certificate_is_an_error(tmp_path, key):
    (tmp_path / "client.key").write_text("")
    message = error_for(tmp_path, _security(f'protocol = "SSL"\n{key} = "client.key"'))
    assert (
        f"key 'app.security.{key}' has value 'client.key': expected only with key 'app.security.ssl_certfile', "
        "the client certificate"
    ) in message


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_settings_load_with_a_tls_protocol(tmp_path, protocol):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("")
    table = (
        f'protocol = "{protocol}"\nssl_cafile = "ca.pem"\nssl_certfile = "client.pem"\nssl_keyfile = "client.key"\n'
        'ssl_key_password_env = "KEY_PASSWORD"\nssl_check_hostname = false'
    )
    if protocol == "SASL_SSL":
        table += "\n" + SASL_KEYS
    security = load_config(write(tmp_path, _security(table)), environ={}).app.security
    assert (security.ssl_cafile, security.ssl_certfile, security.ssl_keyfile) == (
        tmp_path / "ca.pem",
        tmp_path / "client.pem",
        tmp_path / "client.key",
    )
    assert security.ssl_key_password_env == "KEY_PASSWORD" and security.ssl_check_hostname is False


def _with_inputs(inputs: str) -> str:
    return GOOD.replace('inputs = [{ field = "features", shape = [32] }]', f"inputs = {inputs}")


def test_a_field_nested_in_objects_is_named_by_its_path(tmp_path):
    text = _with_inputs('[{ field = ["payload", "features"], shape = [32] }, { field = ["a.b"], shape = [] }]')
    (p,) = load_config(write(tmp_path, text), environ={}).pipelines
    nested, dotted = p.schema.inputs
    assert (nested.field, nested.keys, nested.shape) == ("payload.features", ("payload", "features"), (32,))
    assert (dotted.field, dotted.keys) == ("a.b", ("a.b",)), "a string (or a one-key path) is one key, dots and all"


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ("[{ field = [], shape = [1] }]", "'pipelines.p.features.inputs[0].field' has value []"),
        ('[{ field = ["a", ""], shape = [1] }]', "'pipelines.p.features.inputs[0].field'"),
        ('[{ field = ["a", 1], shape = [1] }]', "'pipelines.p.features.inputs[0].field'"),
        ('[{ field = ["a\\u0000"], shape = [1] }]', "keys without control characters"),
        ("[{ field = [" + ", ".join(['"k"'] * 17) + "], shape = [1] }]", "a list of 1 to 16 of them"),
        (
            '[{ field = ["a", "b"], shape = [1] }, { field = "a.b", shape = [1] }]',
            "two inputs of 'pipelines.p.features.inputs' are named 'a.b'",
        ),
    ],
)
def test_a_bad_field_path_names_the_key(tmp_path, inputs, expected):
    assert expected in error_for(tmp_path, _with_inputs(inputs))
