from __future__ import annotations

import logging
import ssl
import subprocess
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError

from app.config import load_config
from app.kafka_clients import (
    connection,
    describe,
    hush_unread_connection_errors,
    make_admin,
    make_consumer,
    make_producer,
)
from streams.errors import ConfigError
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


async def test_every_producer_compresses_as_configured_and_consumers_are_not_handed_the_setting(tmp_path):
    config = load_config(write(tmp_path, GOOD.replace('id = "t"', 'id = "t"\ncompression = "lz4"')), environ={})
    conn = connection(config, environ={})
    assert conn["compression_type"] == "lz4"
    # Nothing connects until started; aiokafka checks the settings (and the codec's library) here.
    producer = make_producer(conn, linger_ms=5)
    consumer = make_consumer(conn, group_id=None)  # would raise TypeError if handed compression_type
    admin = make_admin(conn)
    try:
        assert producer._compression_type == "lz4"
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_kafka_codec_is_installed(codec):
    import aiokafka.codec

    assert getattr(aiokafka.codec, f"has_{codec}")(), f"aiokafka cannot read or write {codec}: its library is missing"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA and a client certificate it signed, made with openssl as docker/kafka-local makes them."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=unit test CA", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
             "-subj", "/CN=unit test client", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "7",
             "-days", "2", "-out", "client.pem", cwd=d)  # fmt: skip
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", "pass:right", "-out", "encrypted.key", cwd=d)
    return d


def tls_config(tmp_path, pki: Path, extra: str = "") -> Path:
    table = f'\n[app.security]\nprotocol = "SSL"\nssl_cafile = "{pki / "ca.pem"}"\n{extra}'
    return write(tmp_path, with_security(table))


def test_tls_trusts_the_configured_ca_and_presents_the_client_certificate(tmp_path, pki):
    extra = f'ssl_certfile = "{pki / "client.pem"}"\nssl_keyfile = "{pki / "client.key"}"\n'
    conn = connection(load_config(tls_config(tmp_path, pki, extra), environ={}), environ={})
    context = conn["ssl_context"]
    assert conn["security_protocol"] == "SSL"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in context.get_ca_certs()] == ["unit test CA"]
    assert describe(conn) == (f"127.0.0.1:9092 (SSL, CA {pki / 'ca.pem'}, client certificate {pki / 'client.pem'})")


def test_hostname_checking_can_be_turned_off_but_the_certificate_is_still_verified(tmp_path, pki):
    conn = connection(load_config(tls_config(tmp_path, pki, "ssl_check_hostname = false\n"), environ={}), environ={})
    assert not conn["ssl_context"].check_hostname
    assert conn["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert describe(conn) == f"127.0.0.1:9092 (SSL, CA {pki / 'ca.pem'}, no client certificate)"


def test_an_encrypted_client_key_is_opened_with_the_password_from_the_environment(tmp_path, pki):
    extra = (
        f'ssl_certfile = "{pki / "client.pem"}"\nssl_keyfile = "{pki / "encrypted.key"}"\n'
        'ssl_key_password_env = "KEY_PASSWORD"\n'
    )
    config = load_config(tls_config(tmp_path, pki, extra), environ={})
    assert isinstance(connection(config, environ={"KEY_PASSWORD": "right"})["ssl_context"], ssl.SSLContext)
    with pytest.raises(ConfigError, match=r"the password in \$KEY_PASSWORD does not decrypt the private key$"):
        connection(config, environ={"KEY_PASSWORD": "wrong"})
    with pytest.raises(ConfigError, match=r"names the environment variable \$KEY_PASSWORD, which is not set"):
        connection(config, environ={})


@pytest.mark.parametrize(
    ("files", "says"),
    [
        (
            'ssl_certfile = "{pki}/client.pem"\nssl_keyfile = "{pki}/encrypted.key"\n',
            # Never OpenSSL's prompt on the terminal: a worker has no one to type the password.
            "key 'app.security.ssl_certfile' ({pki}/client.pem, key {pki}/encrypted.key): the private key is "
            "encrypted: set key 'app.security.ssl_key_password_env'",
        ),
        (
            'ssl_certfile = "{pki}/client.pem"\nssl_keyfile = "{pki}/ca.key"\n',
            "key 'app.security.ssl_certfile' ({pki}/client.pem, key {pki}/ca.key): the private key does not "
            "belong to the certificate",
        ),
        (
            'ssl_certfile = "{pki}/client.key"\n',
            "key 'app.security.ssl_certfile' ({pki}/client.key): expected a PEM certificate and its private key",
        ),
    ],
)
def test_client_files_that_cannot_be_used_are_named_at_start(tmp_path, pki, files, says):
    config = load_config(tls_config(tmp_path, pki, files.format(pki=pki)), environ={})
    with pytest.raises(ConfigError) as info:
        connection(config, environ={})
    assert says.format(pki=pki) in str(info.value)
    assert str(info.value).startswith(f"{config.path}: ")


def test_a_ca_file_that_holds_no_certificate_is_named_at_start(tmp_path, pki):
    table = f'\n[app.security]\nprotocol = "SSL"\nssl_cafile = "{pki / "client.key"}"\n'
    config = load_config(write(tmp_path, with_security(table)), environ={})
    with pytest.raises(ConfigError, match=r"key 'app.security.ssl_cafile' \(.*client.key\): not a PEM file of CA"):
        connection(config, environ={})


def _unread_report(error: BaseException) -> logging.LogRecord:
    """What asyncio's default exception handler logs for a collected future whose error nobody read."""
    return logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, "Future exception was never retrieved\nfuture: <Future>", None,
        (type(error), error, None),
    )  # fmt: skip


def test_asyncio_reports_of_unread_connection_errors_are_dropped_and_nothing_else() -> None:
    hush_unread_connection_errors()
    hush_unread_connection_errors()  # once per process, however often called
    logger = logging.getLogger("asyncio")
    assert sum(type(f).__name__ == "_UnreadConnectionErrors" for f in logger.filters) == 1
    tls_alert = ssl.SSLError(1, "[SSL: SSLV3_ALERT_BAD_CERTIFICATE] sslv3 alert bad certificate")
    assert not logger.filter(_unread_report(tls_alert))
    assert not logger.filter(_unread_report(ConnectionResetError()))
    assert not logger.filter(_unread_report(KafkaConnectionError("closed")))
    assert logger.filter(_unread_report(ValueError("a bug, not the network")))
    assert logger.filter(_unread_report(TimeoutError()))  # an OSError, but no refused connection
    pending = "Task was destroyed but it is pending!"
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, pending, None, None)
    assert logger.filter(other)
