"""The docker/ files are for users; no Docker engine runs here, so check what can be checked."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def test_compose_file_follows_the_compose_spec():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DOCKER / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_kafka_in_kraft_mode_with_the_version_the_local_script_runs():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    kafka = compose["services"]["kafka"]
    script = (DOCKER / "kafka-local").read_text()
    local_version = re.search(r'version="\$\{KAFKA_VERSION:-([0-9.]+)\}"', script).group(1)
    assert kafka["image"] == f"apache/kafka:{local_version}"
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert worker["environment"]["SLUICE_BROKER"] == "kafka://kafka:9092"
    assert worker["deploy"]["replicas"] >= 2


def test_dockerfile_copies_only_what_exists_and_runs_the_sluice_cli():
    parser = DockerfileParser(path=str(DOCKER / "Dockerfile"))
    python = re.match(r"python:(\d+\.\d+)", parser.baseimage).group(1)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={python}"
    copies = [i["value"].split()[:-1] for i in parser.structure if i["instruction"] == "COPY"]
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    entrypoint = [i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
    assert entrypoint and entrypoint[0].startswith('["sluice"')
    assert any(i["instruction"] == "USER" for i in parser.structure), "the worker must not run as root"


def test_the_local_broker_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(DOCKER / "kafka-local")], check=True)
