"""A worker against the SASL/SCRAM listener of the local broker (docker/kafka-local creates its user)."""

from __future__ import annotations

import asyncio
import os

from app.demo_events import demo_events
from tests.integration.kafka_helpers import (
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
    result = run_sluice("--config", str(config), "worker", "--web-port", "0", env=wrong, timeout=90)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot connect to Kafka at 127.0.0.1:{SASL_PORT} (SASL_PLAINTEXT, SCRAM-SHA-256 as user '{USER}')" in (
        result.stderr
    )
    assert "Authentication failed" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout


def test_a_missing_secret_names_the_environment_variable(kafka, tmp_path):
    config, _ = secured_config(tmp_path, unique("sasl-unset"))
    env = {"TEST_KAFKA_USER": USER, "TEST_KAFKA_PASSWORD": ""}
    result = run_sluice("--config", str(config), "worker", env=env, timeout=90)
    assert result.returncode == 2
    assert "key 'app.security.sasl_password_env' names the environment variable $TEST_KAFKA_PASSWORD" in result.stderr
