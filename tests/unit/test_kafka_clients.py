from __future__ import annotations

import ssl

import pytest

from app.config import ConfigError, load_config
from app.kafka_clients import connection, describe
from tests.unit.test_config import GOOD, error_for, write

SASL = """
[app.security]
protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username_env = "KAFKA_USER"
sasl_password_env = "KAFKA_PASSWORD"
"""


def with_security(table: str) -> str:
    return GOOD.replace('broker = "kafka://127.0.0.1:9092"\n', 'broker = "kafka://127.0.0.1:9092"\n' + table)


def test_plaintext_by_default():
    config = load_config("config/sluice.toml", environ={})
    assert connection(config, environ={}) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_over_tls_reads_its_secrets_from_the_environment(tmp_path):
    config = load_config(write(tmp_path, with_security(SASL)), environ={})
    conn = connection(config, environ={"KAFKA_USER": "svc", "KAFKA_PASSWORD": "hunter2"})
    assert conn["security_protocol"] == "SASL_SSL"
    assert conn["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (conn["sasl_plain_username"], conn["sasl_plain_password"]) == ("svc", "hunter2")
    assert isinstance(conn["ssl_context"], ssl.SSLContext) and conn["ssl_context"].check_hostname
    assert "hunter2" not in describe(conn) and "svc" in describe(conn)
    assert "hunter2" not in repr(config), "the config holds only the variable's name"


def test_a_secret_that_is_not_set_is_named(tmp_path):
    config = load_config(write(tmp_path, with_security(SASL)), environ={})
    with pytest.raises(
        ConfigError, match=r"'app.security.sasl_password_env' names .*\$KAFKA_PASSWORD, which is not set"
    ):
        connection(config, environ={"KAFKA_USER": "svc"})


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('protocol = "SASL"', "key 'app.security.protocol' has value 'SASL': expected one of"),
        ('protocol = "SASL_PLAINTEXT"', "key 'app.security.sasl_mechanism' has value None: expected one of"),
        (
            'protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "SCRAM-SHA-256"\nsasl_password_env = "P"',
            "key 'app.security.sasl_username_env' has value None",
        ),
        ('protocol = "SSL"\nssl_cafile = "missing.pem"', "key 'app.security.ssl_cafile' has value 'missing.pem'"),
        ('sasl_password = "inline"', "unknown key 'app.security.sasl_password'"),
    ],
)
def test_security_mistakes_fail_at_start_up(tmp_path, table, says):
    assert says in error_for(tmp_path, with_security(f"\n[app.security]\n{table}\n"))
