"""The backfill's modules without a broker: a new run read from its flags (``app.backfill_args``),
the model references it takes (``app.model_refs``), its parts (``app.backfill_parts``), and the
run (``app.backfill_run``) opening them in order and closing them in reverse, however it ends."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

import app.backfill_run as backfill_run_module
from app.backfill_args import Run, SinkTarget, new_run
from app.backfill_parts import BackfillSink, announce, checkpoint_every_s, start_checkpoint
from app.backfill_run import backfill_run
from app.config import Config, load_config
from app.model_refs import model_spec, plain_model_spec
from models.spec import ModelSpec
from streams.backfill.checkpoint import Checkpoint
from streams.backfill.replay_plan import ReplayPlan
from streams.errors import CommandLineError
from streams.flow.pipeline import PipelineTopics
from streams.records import Partition

ROOT = Path(__file__).resolve().parents[2]
PLAN = ReplayPlan(
    {Partition("transactions", 0): 0, Partition("transactions", 1): 5},
    {
        Partition("transactions", 0): 10,
        Partition("transactions", 1): 8,
    },
)


@pytest.fixture
def config() -> Config:
    return load_config(ROOT / "config" / "sluice.toml", {})


def a_run(config: Config, tmp_path: Path, **changes: object) -> Run:
    fields: dict[str, object] = {
        "id": "r1",
        "pipeline": config.pipelines[0],
        "model": None,
        "sink": SinkTarget("kafka", "scores"),
        "checkpoint": None,
        "path": tmp_path / "r1.part1of1.json",
        "part": (1, 1),
        **changes,
    }
    return Run(**fields)  # type: ignore[arg-type]


def test_the_backfill_modules_import_neither_the_faust_app_nor_faust():
    code = (
        "import sys, app.model_refs, app.backfill_args, app.backfill_resume, app.backfill_parts, app.backfill_run, "
        "app.backfill_models, app.backfill_report, app.model_inputs; "
        "found = sorted({'app.main', 'faust', 'mode'} & set(sys.modules)); assert not found, found"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("ref", "spec"),
    [
        ("fraud-mlp", ModelSpec(demo="fraud-mlp")),
        ("pkg.mod:Net=w.pt", ModelSpec(module_class="pkg.mod:Net", state_dict=Path("w.pt"))),
        ("m.pt2", ModelSpec(exported=Path("m.pt2"))),
        ("m.ts", None),
        ("", None),
    ],
)
def test_the_plain_model_references_need_no_opt_in(ref, spec):
    assert plain_model_spec(ref) == spec


def test_a_backfill_model_reference_defaults_to_the_pipelines_and_names_what_it_expects(config):
    p = config.pipelines[0]
    assert model_spec(None, p) == model_spec("", p) == p.model
    with pytest.raises(CommandLineError, match=r"^--model 'm\.onnx': expected a demo model \(.*\), a \.pt2 or \.ts"):
        model_spec("m.onnx", p)


def test_a_new_run_takes_the_first_pipeline_and_its_backfill_topic_by_default(config, tmp_path):
    run = new_run(
        config,
        (2, 3),
        tmp_path,
        pipeline_name=None,
        model="fraud-mlp",
        sink_spec=None,
        from_timestamp="1000",
        run_id="r1",
    )
    assert (run.id, run.pipeline.name, run.model, str(run.sink)) == (
        "r1",
        "fraud",
        "fraud-mlp",
        "kafka:fraud-scores-backfill",
    )
    assert (run.checkpoint, run.path, run.part, run.from_timestamp_ms) == (
        None,
        tmp_path / "r1.part2of3.json",
        (2, 3),
        1000,
    )
    assert (run.emit_features, run.crash_after) == (False, None)


def test_a_new_run_may_not_reuse_the_id_of_a_checkpointed_one(config, tmp_path):
    (tmp_path / "r1.part1of1.json").write_text("{}")
    with pytest.raises(CommandLineError) as raised:
        new_run(
            config, (1, 1), tmp_path, pipeline_name=None, model=None, sink_spec=None, from_timestamp=None, run_id="r1"
        )
    assert str(raised.value) == (
        f"--run-id 'r1': part 1/1 of that run is already checkpointed in {tmp_path}; "
        "continue it with --resume r1, or name a new run"
    )


def kafka_sink(state: dict[str, object] | None = None) -> BackfillSink:
    return BackfillSink(object(), PipelineTopics(output="scores", dead_letter="dlq"), lambda: state)  # type: ignore[arg-type]


def test_a_new_runs_checkpoint_is_saved_before_any_output_and_says_what_it_runs(config, tmp_path):
    run = a_run(config, tmp_path, emit_features=True)
    checkpoint = start_checkpoint(run, PLAN, kafka_sink())
    saved = json.loads(run.path.read_text())
    assert saved["run"] == {
        "id": "r1",
        "pipeline": "fraud",
        "model": None,
        "sink": "kafka:scores",
        "part": [1, 1],
        "emit_features": True,
    }
    assert (saved["position"], saved["done"], saved["sink"]) == ([], False, None)
    assert Checkpoint.load(run.path).plan == checkpoint.plan == PLAN


def test_a_resumed_runs_checkpoint_is_its_own_and_is_not_saved_again(config, tmp_path):
    resumed = Checkpoint(tmp_path / "r1.part1of1.json", {"id": "r1"}, PLAN)
    run = a_run(config, tmp_path, checkpoint=resumed)
    assert start_checkpoint(run, PLAN, kafka_sink()) is resumed
    assert not run.path.exists()


def test_the_run_is_announced_on_stderr_with_what_resume_needs(config, tmp_path, capsys):
    checkpoint = Checkpoint(tmp_path / "c.json", {}, PLAN, position={Partition("transactions", 0): 4})
    announce(a_run(config, tmp_path, part=(1, 2)), checkpoint)
    assert capsys.readouterr() == (
        "",
        "backfill r1 (part 1/2): 9 events in 2 partitions of transactions -> kafka:scores; resume with --resume r1\n",
    )
    checkpoint.done = True
    announce(a_run(config, tmp_path, part=(1, 2)), checkpoint)
    assert capsys.readouterr().err.startswith("backfill r1 part 1/2 already finished\nbackfill r1 (part 1/2): ")


@pytest.mark.parametrize(
    ("sink", "crash_after", "every_s"),
    [
        (SinkTarget("kafka", "scores"), None, 1.0),
        (SinkTarget("kafka", "scores.parquet"), None, 1.0),
        (SinkTarget("file", "/out/scores.jsonl"), None, 1.0),
        (SinkTarget("file", "/out/scores.parquet"), None, 10.0),
        (SinkTarget("file", "/out/scores.parquet"), 2, 0.0),
        (SinkTarget("kafka", "scores"), 1, 0.0),
    ],
)
def test_checkpoints_are_saved_every_second_every_ten_to_parquet_and_every_batch_under_the_crash_hook(
    config, tmp_path, sink, crash_after, every_s
):
    assert checkpoint_every_s(a_run(config, tmp_path, sink=sink, crash_after=crash_after)) == every_s


class Opened:
    """Fake parts that record when they open and close; ``fail_at`` raises there."""

    def __init__(self, fail_at: str | None = None) -> None:
        self.events: list[str] = []
        self.fail_at = fail_at

    def step(self, name: str) -> None:
        self.events.append(name)
        if name == self.fail_at:
            raise RuntimeError(name)

    def part(self, name: str, value: object):
        @asynccontextmanager
        async def opened(*args: object):
            self.step(f"open {name}")
            try:
                yield value
            finally:
                self.events.append(f"close {name}")

        return opened


class FakeReplay:
    plan = PLAN

    def source(self, checkpoint: Checkpoint) -> str:
        return "source"


class FakeModels:
    all = ("runner",)
    cost = "cost"

    def roles(self, pipeline: str) -> str:
        return "runner"


@pytest.fixture
def opened(monkeypatch, config, tmp_path):
    def install(fail_at: str | None = None) -> Opened:
        parts = Opened(fail_at)

        async def broker_answers(conn: object) -> None:
            parts.step("check broker")

        @contextmanager
        def pipeline(*args: object, **options: object):
            parts.step("open pipeline")
            try:
                yield "pipeline"
            finally:
                parts.events.append("close pipeline")

        async def warm_up(*args: object) -> None:
            parts.step("warm up")

        async def run_backfill(source, pipeline, batcher, checkpoint, **settings):
            assert (source, pipeline, checkpoint.path) == ("source", "pipeline", tmp_path / "r1.part1of1.json")
            parts.step("run")
            return "summary"

        fakes = {
            "check_broker": broker_answers,
            "opened_replay": parts.part("replay", FakeReplay()),
            "opened_models": parts.part("models", FakeModels()),
            "opened_sink": parts.part("sink", kafka_sink()),
            "opened_pipeline": pipeline,
            "warm_up": warm_up,
            "build_batcher": lambda *args: "batcher",
            "run_backfill": run_backfill,
        }
        for name, fake in fakes.items():
            monkeypatch.setattr(backfill_run_module, name, fake)
        return parts

    return install


OPENED = ["check broker", "open replay", "open models", "open sink", "open pipeline", "warm up", "run"]
CLOSED = ["close pipeline", "close sink", "close models", "close replay"]


async def test_a_run_opens_its_parts_in_order_and_closes_them_in_reverse(opened, config, tmp_path):
    parts = opened()
    assert await backfill_run(config, a_run(config, tmp_path), [ModelSpec(demo="fraud-mlp")]) == "summary"
    assert parts.events == OPENED + CLOSED


@pytest.mark.parametrize("fail_at", ["open models", "open sink", "open pipeline", "warm up", "run"])
async def test_a_run_that_fails_closes_what_it_opened_in_reverse(opened, config, tmp_path, fail_at):
    parts = opened(fail_at)
    with pytest.raises(RuntimeError, match=fail_at):
        await backfill_run(config, a_run(config, tmp_path), [ModelSpec(demo="fraud-mlp")])
    done = OPENED[: OPENED.index(fail_at) + 1]
    opened_parts = [e.removeprefix("open ") for e in done if e.startswith("open ") and e != fail_at]
    assert parts.events == done + [f"close {name}" for name in reversed(opened_parts)]
