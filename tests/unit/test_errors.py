"""The one error tree (``streams.errors``) and the one way a command ends on an operator error."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from streams.errors import (
    BrokerUnreachableError,
    CheckpointError,
    CommandLineError,
    ConfigError,
    FileSinkError,
    ModelError,
    ModelLoadError,
    ModelUnavailableError,
    OperatorError,
    OutputRefused,
    PredictionCountError,
    SluiceError,
    SwapRejected,
    TopicMissingError,
    exit_on_operator_error,
)
from streams.flow.isolation import IsolatingScorer
from tests.fakes import SumRunner

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_ERRORS = [
    ConfigError,
    BrokerUnreachableError,
    TopicMissingError,
    ModelLoadError,
    CommandLineError,
    CheckpointError,
    FileSinkError,
    SwapRejected,
]


@pytest.mark.parametrize("error", OPERATOR_ERRORS)
def test_every_operator_error_is_an_operator_error_and_a_sluice_error_and_not_retriable(error):
    assert issubclass(error, OperatorError) and issubclass(error, SluiceError)
    assert error.retriable is False, "an operator error fails the same way until someone fixes it"


def test_model_errors_sit_under_model_error_and_only_unavailable_is_retriable():
    assert issubclass(ModelUnavailableError, ModelError) and ModelUnavailableError.retriable is True
    assert issubclass(PredictionCountError, ModelError) and PredictionCountError.retriable is False
    assert issubclass(ModelLoadError, ModelError), "a model that cannot load is both a model and an operator error"
    assert not issubclass(ModelUnavailableError, OperatorError), "a model that went down is no operator's typo"


def test_a_refused_output_is_a_sluice_error_that_is_not_retried():
    assert issubclass(OutputRefused, SluiceError) and OutputRefused.retriable is False
    assert not issubclass(OutputRefused, (OperatorError, ModelError))


def test_no_other_module_roots_an_exception_of_its_own():
    """Every exception sluice raises on purpose is in the one tree: no class elsewhere derives
    from ``Exception`` directly (a private control-flow exception inside one module excepted)."""
    strays = []
    for path in sorted(p for room in ("app", "models", "streams") for p in (ROOT / room).rglob("*.py")):
        if path == ROOT / "streams" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & {"Exception", "BaseException"}:
                    strays.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert strays == []


def test_the_error_module_is_a_leaf_every_room_may_import():
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, streams.errors; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('app', 'models', 'streams', 'torch', 'faust', 'aiokafka', 'numpy')))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "['streams', 'streams.errors']"


@pytest.mark.parametrize("error", OPERATOR_ERRORS)
def test_an_operator_error_ends_the_command_with_one_line_and_status_2(error, capsys):
    exc = error(400, "bad\nrequest") if error is SwapRejected else error("a config file\nthat is wrong")
    with pytest.raises(SystemExit) as ended, exit_on_operator_error("backfill"):
        raise exc
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, "one line, whatever the message held"
    assert err.startswith("sluice backfill: ") and "Traceback" not in err


def test_the_exit_line_names_the_command_and_without_one_says_only_sluice(capsys):
    with pytest.raises(SystemExit), exit_on_operator_error("worker"):
        raise ConfigError("config/sluice.toml: key 'app.id' is missing")
    assert capsys.readouterr().err == "sluice worker: config/sluice.toml: key 'app.id' is missing\n"
    with pytest.raises(SystemExit), exit_on_operator_error(None):
        raise TopicMissingError("topic(s) in do not exist")
    assert capsys.readouterr().err == "sluice: topic(s) in do not exist\n"


@pytest.mark.parametrize("error", [ModelUnavailableError("down"), OutputRefused([]), ValueError("a bug")])
def test_anything_else_passes_the_exit_path_untouched(error, capsys):
    with pytest.raises(type(error)), exit_on_operator_error("backfill"):
        raise error
    assert capsys.readouterr().err == ""


class DeviceBusy(ModelError):
    retriable = True


class FlakyRunner(SumRunner):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.batches.append(int(inputs[0].shape[0]))
        raise self.error


async def test_a_retriable_model_error_goes_to_the_caller_for_a_retry_never_into_dead_letters():
    runner = FlakyRunner(DeviceBusy("the device is busy"))
    with pytest.raises(DeviceBusy):
        await IsolatingScorer(runner).predict([np.ones((8, 2), dtype=np.float32)])
    assert runner.batches == [8], "no canary and no bisection: the inputs are not at fault"


async def test_a_model_error_that_is_not_retriable_is_isolated_as_any_other_failure():
    runner = FlakyRunner(PredictionCountError("returned 7 predictions for a batch of 8 inputs"))
    with pytest.raises(ModelUnavailableError, match="PredictionCountError"):
        await IsolatingScorer(runner).predict([np.ones((8, 2), dtype=np.float32)])
    assert runner.batches == [8, 1], "the batch, then the canary"
