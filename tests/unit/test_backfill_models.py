"""``sluice backfill --models``, ``--labels`` and ``--report`` without a broker: the flags read
(``app.backfill_args``), where the other models write, what a checkpoint records of them and
what ``--resume`` accepts (``app.backfill_resume``), and which inputs each model is given
(``app.model_inputs``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.backfill_args import (
    Run,
    SinkTarget,
    check_labels,
    check_shadow_target,
    new_run,
    parse_models,
    shadow_target,
)
from app.backfill_parts import BackfillSink, start_checkpoint
from app.backfill_resume import resumed_run
from app.config import Config, load_config
from app.model_inputs import TakingInputs, inputs_taken, narrowed
from models.demo import FraudMLP, FraudTransformer
from streams.backfill.checkpoint import Checkpoint
from streams.backfill.replay_plan import ReplayPlan
from streams.errors import CheckpointError, CommandLineError
from streams.flow.pipeline import PipelineTopics
from streams.records import Partition
from tests.fakes import SumRunner

ROOT = Path(__file__).resolve().parents[2]
PLAN = ReplayPlan({Partition("transactions", 0): 0}, {Partition("transactions", 0): 10})


@pytest.fixture
def config() -> Config:
    return load_config(ROOT / "config" / "sluice.toml", {})


@pytest.fixture
def deep() -> Config:
    """The transformer's pipeline: inputs ``features`` and ``history`` (per-key state)."""
    return load_config(ROOT / "config" / "transformer.toml", {})


def one_line(call, *args: object, **kwargs: object) -> str:
    with pytest.raises(CommandLineError) as raised:
        call(*args, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_models_are_two_or_more_references_the_first_serving():
    assert parse_models(None, None) == ()
    assert parse_models("fraud-mlp,fraud-transformer", None) == ("fraud-mlp", "fraud-transformer")
    assert parse_models(" a.pt2 , b.pt2,c.pt2", None) == ("a.pt2", "b.pt2", "c.pt2")


@pytest.mark.parametrize(
    ("models", "model", "message"),
    [
        (
            "fraud-mlp,fraud-transformer",
            "fraud-mlp",
            "--models 'fraud-mlp,fraud-transformer' and --model 'fraud-mlp': give one of them "
            "(--models A,B: A serves, B is scored beside it)",
        ),
        ("fraud-mlp", None, "--models 'fraud-mlp': name two models or more (one model: --model fraud-mlp)"),
        ("a,,b", None, "--models 'a,,b': expected model references separated by commas, none empty"),
        ("", None, "--models '': expected model references separated by commas, none empty"),
        (
            "fraud-mlp,fraud-transformer,fraud-mlp",
            None,
            "--models 'fraud-mlp,fraud-transformer,fraud-mlp': 'fraud-mlp' named twice; name each model once",
        ),
    ],
)
def test_models_that_cannot_be_one_run_are_refused_with_one_line(models, model, message):
    assert one_line(parse_models, models, model) == message


def test_a_report_needs_labels_and_labels_are_read_as_the_evaluation_reads_them():
    check_labels(None, None)
    check_labels("label", None)
    check_labels("kafka:labels", Path("out"))
    assert one_line(check_labels, None, Path("out")) == (
        "--report out: give --labels too (a report compares each model's scores with labels)"
    )
    assert "not a Kafka topic name" in one_line(check_labels, "kafka:a/b", None)
    assert "labels come from kafka:TOPIC or an event FIELD, not file:" in one_line(check_labels, "file:x", None)


@pytest.mark.parametrize(
    ("sink", "shadow"),
    [
        ("kafka:scores", "kafka:scores-shadow"),
        ("file:/out/scores.jsonl", "file:/out/scores-shadow.jsonl"),
        ("file:/out/scores.parquet", "file:/out/scores-shadow.parquet"),
    ],
)
def test_the_other_models_write_beside_the_sink(sink, shadow):
    kind, _, target = sink.partition(":")
    assert str(shadow_target(SinkTarget(kind, target))) == shadow


def test_a_topic_too_long_for_its_shadow_is_refused_before_anything_runs(tmp_path):
    check_shadow_target(SinkTarget("kafka", "t" * 242))
    assert one_line(check_shadow_target, SinkTarget("kafka", "t" * 243)).endswith(
        f"{'t' * 243}-shadow, longer than a Kafka topic name may be (249); give a shorter topic"
    )
    (tmp_path / "scores-shadow.jsonl").mkdir()
    message = one_line(check_shadow_target, SinkTarget("file", str(tmp_path / "scores.jsonl")))
    assert message.startswith(f"--sink file:{tmp_path}/scores.jsonl: the other models' outputs go to file:")
    assert "exists and is not a regular file" in message


def new(config: Config, tmp_path: Path, **flags: object) -> Run:
    settings: dict[str, object] = {
        "pipeline_name": None,
        "model": None,
        "sink_spec": None,
        "from_timestamp": None,
        "run_id": "r1",
        **flags,
    }
    return new_run(config, (1, 1), tmp_path, **settings)  # type: ignore[arg-type]


def saved(run: Run, *, shadow_state: dict[str, object] | None = None) -> Checkpoint:
    topics = PipelineTopics(output="scores", dead_letter="dlq")
    shadow = BackfillSink(object(), topics, lambda: shadow_state)  # type: ignore[arg-type]
    return start_checkpoint(run, PLAN, BackfillSink(object(), topics, lambda: None, shadow))  # type: ignore[arg-type]


def test_a_models_run_names_its_champion_and_candidates_and_its_checkpoint_records_them(config, tmp_path):
    run = new(config, tmp_path, models=("fraud-mlp", "fraud-transformer"), labels="kafka:labels")
    assert (run.model, run.candidates, run.models, run.labels) == (
        "fraud-mlp",
        ("fraud-transformer",),
        ("fraud-mlp", "fraud-transformer"),
        "kafka:labels",
    )
    assert run.report_folder == Path("backfill-reports") / "r1"
    saved(run)
    recorded = json.loads(run.path.read_text())
    assert recorded["run"]["models"] == ["fraud-mlp", "fraud-transformer"]
    assert recorded["run"]["labels"] == "kafka:labels"
    assert "shadow_sink" not in recorded, "a Kafka sink keeps no state, for either model's outputs"
    assert Checkpoint.load(run.path).run == recorded["run"]


def test_a_one_model_runs_checkpoint_is_as_it_always_was(config, tmp_path):
    run = new(config, tmp_path, model="fraud-mlp")
    saved(run)
    recorded = json.loads(run.path.read_text())
    assert set(recorded["run"]) == {"id", "pipeline", "model", "sink", "part", "emit_features"}
    assert set(recorded) == {"run", "plan", "position", "done", "sink"}


@pytest.mark.parametrize(
    "models",
    [["fraud-mlp"], ["fraud-mlp", "fraud-mlp"], ["fraud-transformer", "fraud-mlp"], "fraud-mlp", ["fraud-mlp", 3]],
)
def test_a_checkpoints_models_are_checked_before_they_are_believed(config, tmp_path, models):
    run = new(config, tmp_path, models=("fraud-mlp", "fraud-transformer"))
    saved(run)
    data = json.loads(run.path.read_text())
    data["run"]["models"] = models
    run.path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"key 'run.models' has value .*: expected null or a list of two or more"):
        Checkpoint.load(run.path)


def resume(config: Config, tmp_path: Path, **flags: object) -> Run:
    settings: dict[str, object] = {
        "pipeline_name": None,
        "model": None,
        "sink_spec": None,
        "from_timestamp": None,
        "run_id": None,
        **flags,
    }
    return resumed_run(config, "r1", (1, 1), tmp_path, **settings)  # type: ignore[arg-type]


def test_a_resumed_models_run_scores_with_the_same_models_and_labels(config, tmp_path):
    saved(new(config, tmp_path, models=("fraud-mlp", "fraud-transformer"), labels="kafka:labels"))
    for flags in ({}, {"models": ("fraud-mlp", "fraud-transformer")}, {"labels": "kafka:labels"}):
        run = resume(config, tmp_path, **flags)
        assert (run.model, run.candidates, run.labels) == ("fraud-mlp", ("fraud-transformer",), "kafka:labels")


def test_a_resume_refuses_other_models_or_labels_with_one_line(config, tmp_path):
    saved(new(config, tmp_path, models=("fraud-mlp", "fraud-transformer"), labels="kafka:labels"))
    assert one_line(resume, config, tmp_path, models=("fraud-transformer", "fraud-mlp")) == (
        "--models 'fraud-transformer,fraud-mlp': run r1 was started with 'fraud-mlp,fraud-transformer', and "
        "--resume continues it as it started: drop --models"
    )
    assert one_line(resume, config, tmp_path, model="fraud-mlp") == (
        "--model 'fraud-mlp': run r1 was started with --models 'fraud-mlp,fraud-transformer', and --resume "
        "continues it as it started: drop --model"
    )
    assert one_line(resume, config, tmp_path, labels="label") == (
        "--labels 'label': run r1 was started with 'kafka:labels', and --resume continues it as it started: "
        "drop --labels"
    )


def test_a_one_model_run_resumes_with_neither_other_models_nor_new_labels(config, tmp_path):
    saved(new(config, tmp_path))
    assert one_line(resume, config, tmp_path, models=("fraud-mlp", "fraud-transformer")) == (
        "--models 'fraud-mlp,fraud-transformer': run r1 was started with one model (the pipeline's own model), "
        "and --resume continues it as it started: drop --models (to compare models, start a new run)"
    )
    assert one_line(resume, config, tmp_path, labels="label") == (
        "--labels label: run r1 was started without --labels, so no model's scores were kept for a report "
        "before now; start a new run with --labels"
    )


def test_a_models_run_with_a_model_file_resumes_only_with_the_same_models_on_the_command_line(config, tmp_path):
    models = ("fraud-mlp", "candidate.pt2")
    saved(new(config, tmp_path, models=models))
    message = one_line(resume, config, tmp_path)
    assert message.endswith(
        "models: run r1 was started with --models 'fraud-mlp,candidate.pt2'; a resume loads a model file or module "
        "only when the command line names it: repeat --models 'fraud-mlp,candidate.pt2' if it is the models you "
        "mean to run"
    )
    assert "give --models 'fraud-mlp,candidate.pt2' instead" in one_line(resume, config, tmp_path, model="x.pt2")
    assert resume(config, tmp_path, models=models).candidates == ("candidate.pt2",)


def test_a_models_run_to_files_checks_the_other_models_files_before_a_resume(config, tmp_path):
    out = tmp_path / "scores.jsonl"
    run = new(config, tmp_path, models=("fraud-mlp", "fraud-transformer"), sink_spec=f"file:{out}")
    state = {"lengths": {"scores-shadow.jsonl": 5, "scores-shadow.dead-letters.jsonl": 0}, "parts": []}
    checkpoint = saved(run, shadow_state=state)
    checkpoint.sink = {"lengths": {"scores.jsonl": 0, "scores.dead-letters.jsonl": 0}, "parts": []}
    checkpoint.save()
    for name in ("scores.jsonl", "scores.dead-letters.jsonl", "scores-shadow.dead-letters.jsonl"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "scores-shadow.jsonl").write_bytes(b"12")
    message = one_line(resume, config, tmp_path, sink_spec=f"file:{out}")
    assert message == (
        f"checkpoint {run.path}: key 'shadow_sink': {tmp_path}/scores-shadow.jsonl holds 2 bytes but the "
        "checkpoint counts 5: it was changed since; start a new run"
    )
    (tmp_path / "scores-shadow.jsonl").write_bytes(b"12345")
    assert resume(config, tmp_path, sink_spec=f"file:{out}").candidates == ("fraud-transformer",)


def test_a_narrower_model_is_given_the_inputs_its_forward_names(deep):
    p = deep.pipelines[0]
    assert [i.name for i in p.inputs] == ["features", "history"]
    assert inputs_taken(FraudMLP(), p) == (0,)
    assert inputs_taken(FraudTransformer(), p) is None, "every input, in the pipeline's order"
    assert narrowed(p, (0,)).input_shapes == [(32,)]
    assert narrowed(p, None) is p

    class Anything(torch.nn.Module):
        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return inputs[0].sum(dim=1)

    class History(torch.nn.Module):
        def forward(self, history: torch.Tensor) -> torch.Tensor:
            return history.sum(dim=(1, 2))

    class Other(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(dim=1)

    assert inputs_taken(Anything(), p) is None
    assert inputs_taken(History(), p) == (1,)
    assert inputs_taken(Other(), p) is None, "names the pipeline does not have: every input, as the worker gives"


async def test_a_narrower_runner_gets_only_its_inputs():
    inner = SumRunner()
    runner = TakingInputs(inner, (1,))
    features, history = np.ones((2, 3), dtype=np.float32), np.full((2, 2), 2.0, dtype=np.float32)
    assert (await runner.predict([features, history])).tolist() == [4.0, 4.0]
    assert (runner.name, runner.version) == (inner.name, inner.version)
