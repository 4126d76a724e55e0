"""Importing sluice reads no config file and, outside what serves a model, imports no torch.

The config is read when a command runs; only the worker and ``sluice backfill`` load a model,
so only they import torch (a second or more of start-up, and hundreds of modules).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import COMMAND_MODULES

ROOT = Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/sluice.toml"
# Run in a fresh interpreter: says at exit whether torch was imported, whatever ended the run.
SAYS_TORCH = (
    "import atexit, sys; atexit.register(lambda: sys.stderr.write(f'torch imported: {\"torch\" in sys.modules}\\n')); "
)


def python(code: str, *, config: str = MISSING) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLUICE_CONFIG": config}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    """``sluice ARGS`` in a fresh interpreter, saying whether torch was imported."""
    return python(f"{SAYS_TORCH}sys.argv = ['sluice', *{list(args)!r}]; from app.cli import main; main()")


def test_importing_the_config_the_app_and_the_light_commands_imports_no_torch_and_reads_no_config():
    light = [m for m in COMMAND_MODULES.values() if m != "app.commands.backfill"]
    result = python(
        f"import app.config, app.cli, app.main, {', '.join(light)}; import sys; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert app.main._loaded is None, 'config read'"
    )
    assert result.returncode == 0, result.stderr


def test_importing_every_command_reads_no_config_file():
    """With no config file at all: importing the app and every command succeeds."""
    result = python(f"import app.main, {', '.join(COMMAND_MODULES.values())}, app.worker")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "torch"),
    [
        (["--help"], False),
        (["watch", "--help"], False),
        (["produce", "--help"], False),
        (["swap-model", "--help"], False),
        (["worker", "--help"], False),
        (["backfill", "--help"], True),  # backfill's module loads models: torch, but no config
    ],
)
def test_help_reads_no_config_and_imports_torch_only_for_a_command_that_loads_models(args, torch):
    result = sluice("--config", MISSING, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: sluice " + ("" if args == ["--help"] else f"{args[0]} "))
    assert result.stderr == f"torch imported: {torch}\n"


@pytest.mark.parametrize("args", [["watch"], ["produce"], ["swap-model", "--version", "2"]])
def test_a_command_reads_the_config_when_it_runs_and_a_missing_one_is_one_line(args):
    result = sluice("--config", MISSING, *args)
    assert result.returncode == 2
    assert result.stderr == (
        f"sluice {args[0]}: config file {MISSING} does not exist (set --config PATH or $SLUICE_CONFIG)\n"
        "torch imported: False\n"
    )


def test_the_faust_app_takes_its_id_broker_and_web_address_from_the_config_when_configured(tmp_path):
    config = tmp_path / "sluice.toml"
    config.write_text(
        """
[app]
id = "scoring"
broker = "kafka://10.1.2.3:9094"
web_bind = "0.0.0.0"
web_port = 7071
[pipelines.p]
input_topics = ["in"]
output_topic = "out"
dead_letter_topic = "dlq"
[pipelines.p.model]
demo = "fraud-mlp"
[pipelines.p.features]
inputs = [{ field = "features", shape = [32] }]
"""
    )
    result = python(
        "from app.main import app, config; assert repr(config) == '<config: read when a command runs>'; "
        "app.finalize(); c = app.conf; "
        "print(c.id, c.datadir, *c.broker, c.web_bind, c.web_port, c.canonical_url.port, config.pipelines[0].name)",
        config=str(config),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["scoring", "scoring-data", "kafka://10.1.2.3:9094", "0.0.0.0", "7071", "7071", "p"]
