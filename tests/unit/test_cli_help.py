"""``sluice --help``, ``--version`` and Faust's commands, as a user runs them (no broker, no config)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from app.cli import COMMAND_MODULES, COMMANDS, NOT_SLUICE

ROOT = Path(__file__).resolve().parents[2]
NO_CONFIG = ["--config", "/nonexistent/sluice.toml"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def listed_commands(help_text: str) -> list[str]:
    """The command names in the help's command sections, in order."""
    names: list[str] = []
    in_commands = False
    for line in help_text.splitlines():
        if line and not line.startswith(" "):
            in_commands = "commands" in line.lower() and line.endswith(":")
        elif in_commands and line.startswith("  ") and not line.startswith("   "):
            names.append(line.split()[0])
    return names


@pytest.mark.parametrize("config", [[], NO_CONFIG], ids=["config", "no-config"])
def test_the_help_says_what_sluice_is_and_lists_its_commands_first(config):
    result = run_cli(*config, "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Usage: sluice [OPTIONS] COMMAND [ARGS]...")
    assert "Welcome" not in out and "faust-streaming.github.io" not in out
    assert "Serve a PyTorch model on Kafka streams in real time" in out
    assert "sluice worker -l info" in out and "sluice produce" in out
    names = listed_commands(out)
    assert names[: len(COMMANDS)] == ["worker", "produce", "watch", "backfill", "swap-model"]
    assert names[len(COMMANDS) :] == ["completion"]  # what is left of Faust's
    assert not set(names) & set(NOT_SLUICE)


def test_the_help_lists_every_command_sluice_registers():
    """COMMANDS (the help's table) names every command that app.commands adds to Faust's, and
    COMMAND_MODULES the module that registers each."""
    script = """
import importlib
from faust.cli.faust import cli
from app.cli import COMMAND_MODULES
for name, module in COMMAND_MODULES.items():
    before = set(cli.commands)
    importlib.import_module(module)
    print(name, *sorted(set(cli.commands) - before))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{name} {name}" for name in COMMAND_MODULES]
    assert set(COMMAND_MODULES) | {"worker"} == set(COMMANDS)


def test_the_version_is_sluices_with_faust_aiokafka_and_torch_beside_it():
    result = run_cli(*NO_CONFIG, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"sluice {version('sluice')} (faust-streaming {version('faust-streaming')}, "
        f"aiokafka {version('aiokafka')}, torch {version('torch')})\n"
    )


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("args", [["models"], ["model", "Transaction"], ["models", "--help"]])
def test_faust_model_commands_say_where_models_are_configured(args):
    line = one_line_exit_2(run_cli(*NO_CONFIG, *args))
    assert line.startswith(f"sluice {args[0]}: not a sluice command: ")
    assert "[pipelines.NAME.model]" in line


@pytest.mark.parametrize("name", ["agents", "tables", "livecheck", "reset", "clean-versions", "send"])
def test_faust_commands_that_mean_nothing_for_sluice_are_refused(name):
    line = one_line_exit_2(run_cli(*NO_CONFIG, name, "--json"))
    assert line.startswith(f"sluice {name}: not a sluice command; sluice's commands: worker, produce")


def test_the_worker_help_keeps_faust_worker_options_and_needs_no_config():
    result = run_cli(*NO_CONFIG, "worker", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: sluice worker [OPTIONS]")
    assert "Score every configured pipeline as events arrive." in result.stdout
    assert "--web-port" in result.stdout and "--loglevel" in result.stdout
