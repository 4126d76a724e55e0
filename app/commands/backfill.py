"""``sluice backfill``: score a pipeline's history through the live pipeline's code, then exit.

The command as Faust registers it: its flags, read into a checked ``Run`` (``app.backfill_args``,
and ``app.backfill_resume`` for ``--resume``) before the broker is reached or a file written;
the run itself (``app.backfill_run``); and its last line.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from faust.cli import AppCommand, option

from app.backfill_args import Run, check_labels, new_run, parse_models, parse_part
from app.backfill_args import parse_timestamp as parse_timestamp  # where tests and users found it
from app.backfill_resume import resumed_run
from app.backfill_run import backfill_run
from app.config import Config
from app.crash_hooks import count_from_env
from app.main import app, config
from app.model_refs import model_spec
from app.schema_registry import refuse_in_memory
from models.spec import ModelSpec
from streams.errors import CommandLineError, ModelError, exit_on_operator_error

DEFAULT_STATE = Path.home() / ".local" / "state" / "sluice" / "backfill"
CRASH_HOOK_ENV = "SLUICE_TEST_CRASH_AFTER_CHECKPOINTS"


def crash_hook() -> int | None:
    return count_from_env(CRASH_HOOK_ENV, "checkpoints")


async def checked_run(
    config: Config,
    pipeline_name: str | None,
    model: str | None,
    sink_spec: str | None,
    from_timestamp: str | None,
    resume: str | None,
    run_id: str | None,
    part: str,
    state_dir: Path,
    emit_features: bool = False,
    models: str | None = None,
    labels: str | None = None,
    report: Path | None = None,
) -> tuple[Run, list[ModelSpec]]:
    """The run the flags name, new or resumed, and the specs of its models (the champion first):
    everything the operator gave is checked before the broker is reached or a file written."""
    k, n = parse_part(part)
    crash_after = crash_hook()
    refs = parse_models(models, model)
    check_labels(labels, None)
    flags = {"pipeline_name": pipeline_name, "model": model, "sink_spec": sink_spec, "from_timestamp": from_timestamp}
    if resume:
        run = resumed_run(config, resume, (k, n), state_dir, **flags, run_id=run_id, models=refs, labels=labels)
    else:
        run = new_run(config, (k, n), state_dir, **flags, run_id=run_id, models=refs, labels=labels)
    check_labels(run.labels, report)  # a resumed run's labels may be its checkpoint's
    p = run.pipeline
    if run.checkpoint is not None:
        emit_features = emit_features or bool(run.checkpoint.run.get("emit_features"))  # as the run began
    if emit_features and p.state is None:
        raise CommandLineError(
            f"--emit-features: pipeline {p.name} has no per-key features "
            f"(no [pipelines.{p.name}.state] in {config.path})"
        )
    try:
        specs = [model_spec(ref, p) for ref in run.models]
    except CommandLineError as exc:
        if run.checkpoint is None:
            raise
        raise CommandLineError(f"checkpoint {run.path}: model: {exc}") from None
    try:
        await asyncio.to_thread(state_dir.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandLineError(f"--state-dir {state_dir}: {exc.strerror}") from None
    return replace(run, emit_features=emit_features, crash_after=crash_after, report=report), specs


@app.command(
    option("--pipeline", "-p", default=None, help="Pipeline to backfill (default: the first in the config)."),
    option(
        "--model",
        "-m",
        default=None,
        help="Score with this model instead: demo name, .pt2, mod:Class=w.pt, or .ts (TorchScript is code: only "
        "where the pipeline's model has trust_torchscript = true in the config).",
    ),
    option("--sink", default=None, help="kafka:TOPIC (default: the pipeline's backfill_topic) or file:PATH."),
    option(
        "--from-timestamp",
        default=None,
        help="Start at this time (ISO 8601, or epoch ms in ASCII digits; 1970 to 9999), not offset 0.",
    ),
    option(
        "--resume",
        default=None,
        help="Continue the run with this id where it stopped (a run started with a model file or module needs "
        "the same --model again, and one to a file the same --sink file:PATH: a resume never loads or writes "
        "a file only its checkpoint names).",
    ),
    option("--run-id", default=None, help="Name the run: letters, digits, '.', '-', '_' (default: pipeline and time)."),
    option("--part", default="1/1", help="K/N: this process takes every Nth partition, starting at the Kth."),
    option("--state-dir", type=Path, default=DEFAULT_STATE, help="Where run checkpoints are kept."),
    option(
        "--emit-features",
        is_flag=True,
        default=False,
        help="Write each event's per-key features beside its prediction (a training set).",
    ),
    option(
        "--models",
        default=None,
        help="A,B[,C...]: score every event with each model (references as --model takes) in one pass: A serves "
        "the outputs, the others write theirs to TOPIC-shadow (file:PATH-shadow.jsonl|.parquet for a file sink).",
    ),
    option(
        "--labels",
        default=None,
        help="FIELD of each event, or kafka:TOPIC of {id, label} records: evaluate every model against them at "
        "the end (ROC AUC, PR AUC, log loss, calibration, agreement).",
    ),
    option(
        "--report",
        type=Path,
        default=None,
        help="Folder for the --labels report (.md, .json, .png; default: backfill-reports/RUN_ID).",
    ),
)
async def backfill(
    self: AppCommand,
    pipeline: str | None,
    model: str | None,
    sink: str | None,
    from_timestamp: str | None,
    resume: str | None,
    run_id: str | None,
    part: str,
    state_dir: Path,
    emit_features: bool,
    models: str | None,
    labels: str | None,
    report: Path | None,
) -> None:
    """Replay a pipeline's input topics from the beginning through the same pipeline, then exit."""
    try:
        with exit_on_operator_error("backfill"):
            refuse_in_memory(config, "backfill")
            run, specs = await checked_run(
                config,
                pipeline,
                model,
                sink,
                from_timestamp,
                resume,
                run_id,
                part,
                state_dir,
                emit_features,
                models=models,
                labels=labels,
                report=report,
            )
            if run.sink.kind == "kafka" and run.pipeline.output_format != "json":
                refuse_in_memory(config, "backfill", "avro")  # Avro outputs no other process could read
            summary = await backfill_run(config, run, specs)
    except ModelError as exc:
        if not exc.retriable:
            raise
        # Not the events' fault: dead-lettering history would be wrong. What is acknowledged is checkpointed.
        print(
            f"sluice backfill: {exc}\nfix the model, then continue with the --resume id printed above", file=sys.stderr
        )
        raise SystemExit(1) from None
    print(
        f"backfill done: {summary.events} events, {summary.scored} predictions, {summary.dead_lettered} "
        f"dead-lettered, {summary.seconds:.1f}s, {summary.rate:,.0f} events/s",
        file=sys.stderr,
    )
