from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import invoked_command, take_config_option, with_fast_loop


@pytest.mark.parametrize(
    ("argv", "rest", "path"),
    [
        (["worker", "-l", "info"], ["worker", "-l", "info"], None),
        (["--config", "a.toml", "worker"], ["worker"], "a.toml"),
        (["worker", "--config=b.toml", "-l", "info"], ["worker", "-l", "info"], "b.toml"),
    ],
)
def test_config_option_is_taken_wherever_it_appears(argv, rest, path):
    assert take_config_option(argv) == (rest, path)


def test_config_option_without_a_path_is_an_error():
    with pytest.raises(SystemExit, match="needs a file path"):
        take_config_option(["worker", "--config"])


def test_an_explicit_loop_choice_wins():
    assert with_fast_loop(["-L", "aio", "worker"]) == ["-L", "aio", "worker"]
    assert with_fast_loop(["worker"]) in (["--loop", "uvloop", "worker"], ["worker"])


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=root, capture_output=True, text=True, timeout=120
    )


def test_a_bad_config_stops_the_command_with_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[app]\nid = "x"\ntorch_threads = -1\n')
    result = run_cli("--config", str(bad), "worker")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}: key 'app.torch_threads' has value -1: expected an integer >= 0" in result.stderr


def test_an_unloadable_model_stops_the_worker_before_it_starts(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        """
[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
[pipelines.p.model]
class = "models.demo:FraudMLP"
state_dict = "missing-weights.pt"
[pipelines.p.features]
inputs = [{ field = "features", shape = [32] }]
"""
    )
    result = run_cli("--config", str(config), "worker")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "key 'pipelines.p.model'" in result.stderr
    assert "missing-weights.pt for models.demo:FraudMLP does not exist" in result.stderr


def test_an_unreachable_broker_stops_the_worker_with_the_address_and_what_to_check(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "c.toml"
    config.write_text(
        f"""
[app]
broker = "kafka://127.0.0.1:{port}"
[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
[pipelines.p.model]
demo = "fraud-mlp"
[pipelines.p.features]
inputs = [{{ field = "features", shape = [32] }}]
"""
    )
    result = run_cli("--config", str(config), "worker")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"no Kafka broker answered at 127.0.0.1:{port}" in result.stderr
    assert "docker/kafka-local status" in result.stderr


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["worker", "-l", "info"], "worker"),
        (["-A", "app.main", "worker"], "worker"),
        (["--loop", "uvloop", "--datadir", "worker", "produce"], "produce"),
        (["-l", "info", "backfill", "--pipeline", "worker"], "backfill"),
        (["--help"], None),
    ],
)
def test_the_invoked_command_is_found_past_options_and_their_values(argv, command):
    assert invoked_command(argv) == command
