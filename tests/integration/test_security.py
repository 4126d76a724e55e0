"""A worker against the secured listeners of the local broker: SASL/SCRAM (docker/kafka-local creates
its user), TLS, and mutual TLS (docker/kafka-local makes a local CA and certificates in its home)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import pytest

from app.demo_events import demo_events
from tests.integration.kafka_helpers import (
    free_port,
    read_topic,
    run_sluice,
    running_worker,
    tally,
    topics_for,
    unique,
    write_config,
)

SASL_PORT = os.environ.get("SLUICE_KAFKA_SASL_PORT", "9094")
USER = os.environ.get("SLUICE_KAFKA_SCRAM_USER", "sluice")
PASSWORD = os.environ.get("SLUICE_KAFKA_SCRAM_PASSWORD", "sluice-dev-secret")
SSL_PORT = os.environ.get("SLUICE_KAFKA_SSL_PORT", "9095")
MTLS_PORT = os.environ.get("SLUICE_KAFKA_MTLS_PORT", "9096")
# Where docker/kafka-local keeps its CA (ca.pem) and the client certificate it signed (client.pem, client.key).
KAFKA_HOME = Path(
    os.environ.get("SLUICE_KAFKA_HOME")
    or Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "sluice" / "kafka"
)
TLS_DIR = KAFKA_HOME / "tls"

SECURITY = """
[app.security]
protocol = "SASL_PLAINTEXT"
sasl_mechanism = "{mechanism}"
sasl_username_env = "TEST_KAFKA_USER"
sasl_password_env = "TEST_KAFKA_PASSWORD"
"""


def secured_config(tmp_path, name: str, mechanism: str = "SCRAM-SHA-256"):
    topics = topics_for(name)
    config = write_config(
        tmp_path,
        bootstrap=f"127.0.0.1:{SASL_PORT}",
        pipeline="sec",
        app_extra=SECURITY.format(mechanism=mechanism),
        **topics,
    )
    return config, topics


async def test_the_right_scram_credentials_score_events_end_to_end(kafka, tmp_path):
    config, topics = secured_config(tmp_path, unique("sasl"), mechanism="SCRAM-SHA-512")
    env = {"TEST_KAFKA_USER": USER, "TEST_KAFKA_PASSWORD": PASSWORD}
    count, seed = 300, 41
    log = tmp_path / "worker.log"
    with running_worker(config, log, ready_text="partitions assigned: ", env=env):
        produced = await asyncio.to_thread(
            run_sluice, "--config", str(config), "produce", "--count", str(count), "--seed", str(seed), env=env
        )
        assert produced.returncode == 0, produced.stderr
        # Read back over the plaintext listener of the same broker.
        outputs = await read_topic(kafka, topics["output_topic"], expected=count, within_s=60)
    missing, _ = tally(outputs, {e.id for e in demo_events(count, seed=seed)})
    assert not missing
    assert PASSWORD not in log.read_text(), "secrets are never logged"


def test_wrong_credentials_stop_the_worker_at_start_with_a_clear_error(kafka, tmp_path):
    config, _ = secured_config(tmp_path, unique("sasl-wrong"))
    wrong = {"TEST_KAFKA_USER": USER, "TEST_KAFKA_PASSWORD": "not-the-password"}
    result = run_sluice("--config", str(config), "worker", "--web-port", str(free_port()), env=wrong, timeout=90)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot connect to Kafka at 127.0.0.1:{SASL_PORT} (SASL_PLAINTEXT, SCRAM-SHA-256 as user '{USER}')" in (
        result.stderr
    )
    assert "Authentication failed" in result.stderr
    assert "the credentials in the environment variables" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_a_missing_secret_names_the_environment_variable(kafka, tmp_path):
    config, _ = secured_config(tmp_path, unique("sasl-unset"))
    env = {"TEST_KAFKA_USER": USER, "TEST_KAFKA_PASSWORD": ""}
    result = run_sluice("--config", str(config), "worker", env=env, timeout=90)
    assert result.returncode == 2
    assert "key 'app.security.sasl_password_env' names the environment variable $TEST_KAFKA_PASSWORD" in result.stderr


@pytest.fixture(scope="module")
def tls(kafka) -> Path:
    """The broker's TLS files, once its TLS listeners answer."""
    for port in (SSL_PORT, MTLS_PORT):
        try:
            socket.create_connection(("127.0.0.1", int(port)), timeout=5).close()
        except OSError:
            pytest.fail(
                f"no TLS listener on 127.0.0.1:{port}: the broker was started by an older docker/kafka-local; "
                "run docker/kafka-local restart"
            )
    assert (TLS_DIR / "ca.pem").is_file(), f"docker/kafka-local made no CA in {TLS_DIR}"
    return TLS_DIR


def tls_config(tmp_path: Path, name: str, port: str, **keys: str) -> tuple[Path, dict[str, str]]:
    table = '\n[app.security]\nprotocol = "SSL"\n' + "".join(f'{k} = "{v}"\n' for k, v in keys.items())
    topics = topics_for(name)
    return write_config(tmp_path, bootstrap=f"127.0.0.1:{port}", pipeline="tls", app_extra=table, **topics), topics


async def scores_over_tls(kafka: str, tmp_path: Path, config: Path, topics: dict[str, str], env: dict[str, str]):
    count, seed = 300, 43
    with running_worker(config, tmp_path / "worker.log", ready_text="partitions assigned: ", env=env):
        # The events go in over the same TLS listener; the outputs are read back over plaintext.
        produced = await asyncio.to_thread(
            run_sluice, "--config", str(config), "produce", "--count", str(count), "--seed", str(seed), env=env
        )
        assert produced.returncode == 0, produced.stderr
        outputs = await read_topic(kafka, topics["output_topic"], expected=count, within_s=60)
    missing, _ = tally(outputs, {e.id for e in demo_events(count, seed=seed)})
    assert not missing


def refused_at_start(config: Path) -> str:
    """The one line a worker prints when the broker's TLS listener refuses it; it exits 2 at once."""
    result = run_sluice("--config", str(config), "worker", "--web-port", str(free_port()), timeout=90)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("sluice worker: "), "the one line is sluice's (aiokafka's own errors are not printed)"
    return line


async def test_a_worker_that_trusts_the_brokers_ca_scores_events_over_tls(kafka, tls, tmp_path):
    # Hostname checking stays on (the default): the broker's certificate names 127.0.0.1.
    config, topics = tls_config(tmp_path, unique("tls"), SSL_PORT, ssl_cafile=str(tls / "ca.pem"))
    await scores_over_tls(kafka, tmp_path, config, topics, env={})


def test_a_worker_that_trusts_another_ca_stops_at_start_with_one_line(kafka, tls, tmp_path):
    # A CA of our own, which never signed the broker's certificate.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other-ca.key", "-out",
         "other-ca.pem", "-days", "1", "-subj", "/CN=not the broker's CA"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    config, _ = tls_config(tmp_path, unique("tls-wrong-ca"), SSL_PORT, ssl_cafile=str(tmp_path / "other-ca.pem"))
    line = refused_at_start(config)
    assert line.startswith(
        f"sluice worker: cannot connect to Kafka at 127.0.0.1:{SSL_PORT} (SSL, CA {tmp_path / 'other-ca.pem'}, "
        "no client certificate): [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    ), line
    assert "check that ssl_cafile is the CA that signed the broker's certificate" in line


@pytest.fixture
def encrypted_client_key(tls, tmp_path) -> Path:
    """The broker's client key, encrypted as it would be in production (password: key-secret)."""
    subprocess.run(
        ["openssl", "pkey", "-in", str(tls / "client.key"), "-aes256", "-passout", "pass:key-secret",
         "-out", "client-encrypted.key"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    return tmp_path / "client-encrypted.key"


async def test_mutual_tls_with_a_client_certificate_scores_events(kafka, tls, encrypted_client_key, tmp_path):
    config, topics = tls_config(
        tmp_path,
        unique("mtls"),
        MTLS_PORT,
        ssl_cafile=str(tls / "ca.pem"),
        ssl_certfile=str(tls / "client.pem"),
        ssl_keyfile=str(encrypted_client_key),
        ssl_key_password_env="TEST_KEY_PASSWORD",
    )
    await scores_over_tls(kafka, tmp_path, config, topics, env={"TEST_KEY_PASSWORD": "key-secret"})
    assert "key-secret" not in (tmp_path / "worker.log").read_text(), "secrets are never logged"


def test_mutual_tls_refuses_a_worker_without_a_client_certificate_with_one_line(kafka, tls, tmp_path):
    config, _ = tls_config(tmp_path, unique("mtls-no-cert"), MTLS_PORT, ssl_cafile=str(tls / "ca.pem"))
    line = refused_at_start(config)
    assert line.startswith(
        f"sluice worker: cannot connect to Kafka at 127.0.0.1:{MTLS_PORT} (SSL, CA {tls / 'ca.pem'}, "
        "no client certificate): "
    ), line
