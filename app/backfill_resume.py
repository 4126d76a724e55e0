"""``sluice backfill --resume``'s rules: the run a checkpoint describes, checked with the command
line's own rules (``app.backfill_args``), since whoever could write to the state folder wrote its
pipeline, model and sink; and what the command line must, may or must not say again to continue it.
"""

from __future__ import annotations

from pathlib import Path

from app.backfill_args import Run, parse_sink, pipeline_named, run_checkpoint, shadow_target
from app.config import Config
from app.model_refs import model_spec
from models.registry import DEMO_MODELS
from streams.backfill.checkpoint import Checkpoint
from streams.backfill.file_sink import FileState, check_resume
from streams.errors import CommandLineError, FileSinkError


def resumed_run(
    config: Config,
    resume: str,
    part: tuple[int, int],
    state_dir: Path,
    *,
    pipeline_name: str | None,
    model: str | None,
    sink_spec: str | None,
    from_timestamp: str | None,
    run_id: str | None,
    models: tuple[str, ...] = (),
    labels: str | None = None,
) -> Run:
    """The run a checkpoint describes, checked with the command line's own rules: whoever could
    write to the state folder wrote its pipeline, models, labels and sink."""
    k, n = part
    path = run_checkpoint(resume, part, state_dir, "--resume")
    if not path.is_file():
        raise CommandLineError(f"--resume {resume!r}: no checkpoint for part {k}/{n} in {state_dir}")
    checkpoint = Checkpoint.load(path)
    where = f"checkpoint {path}:"
    run = checkpoint.run
    if run["id"] != resume or run["part"] != [k, n]:
        raise CommandLineError(f"{where} it is for run {run['id']!r} part {run['part']}, not {resume!r} part {k}/{n}")
    p = pipeline_named(config, run["pipeline"], f"{where} pipeline")
    sink = parse_sink(run["sink"], f"{where} sink")
    strays = sorted({tp.topic for tp in checkpoint.plan.end} - set(p.input_topics))
    if strays:
        raise CommandLineError(f"{where} it replays {', '.join(strays)}, which pipeline {p.name} does not read")
    if checkpoint.sink is not None and sink.kind != "file":
        raise CommandLineError(f"{where} key 'sink': a Kafka sink keeps no state")
    if checkpoint.sink is None and sink.kind == "file":
        raise CommandLineError(
            f"{where} key 'sink' has value None: expected the lengths of the files sink {sink} writes"
        )
    try:
        state = FileState.from_json(checkpoint.sink) if checkpoint.sink is not None else None
    except FileSinkError as exc:
        raise CommandLineError(f"{where} key 'sink': {exc}") from None
    recorded_models: list[str] | None = run.get("models")
    shadow_state = _shadow_state(checkpoint, where, sink.kind == "file" and recorded_models is not None)
    # A model file or module only the checkpoint names is never loaded: loading runs code (a
    # module's import, a pickle in an archive), and whoever wrote the checkpoint chose it. The
    # checkpoint's model is compared with the command line's; a demo name or the config's model
    # (null) names no file. "-m" is the command line's own choice, as when the run started.
    recorded_model = run["model"]
    recorded_refs = recorded_models if recorded_models is not None else [recorded_model]
    for ref in recorded_refs:
        if ref is not None:
            try:
                model_spec(ref, p)  # its form only: nothing is opened or imported
            except CommandLineError as exc:
                raise CommandLineError(f"{where} model: {exc}") from None
    named_by_file = any(ref is not None and ref not in DEMO_MODELS for ref in recorded_refs)
    _check_models_flags(resume, recorded_models, recorded_model, model, models, named_by_file)
    recorded_labels = run.get("labels")
    if labels is not None and recorded_labels is None:
        raise CommandLineError(
            f"--labels {labels}: run {resume} was started without --labels, so no model's scores were kept for a "
            "report before now; start a new run with --labels"
        )
    # The same for a file sink: a resume appends to its files and first cuts them back to the
    # lengths the checkpoint counts, so it writes only where the command line says again.
    only_named_here = {
        "--model": "a resume loads a model file or module only when the command line names it",
        "--models": "a resume loads a model file or module only when the command line names it",
        "--sink": "a resume writes to a file sink, and cuts it back to the checkpoint, only when the command line "
        "names it",
    }
    must_repeat = {"--model": named_by_file, "--models": named_by_file, "--sink": sink.kind == "file"}
    given: dict[str, tuple[str | None, str | None]] = {
        "--pipeline": (pipeline_name, p.name),
        "--sink": (str(parse_sink(sink_spec)) if sink_spec else None, str(sink)),
        "--run-id": (run_id, resume),
        "--labels": (labels, recorded_labels),
    }
    if recorded_models is None:
        given["--model"] = (model, recorded_model)
    else:
        given["--models"] = (",".join(models) if models else None, ",".join(recorded_models))
    for flag, (value, recorded) in given.items():
        if value is not None and value != recorded:
            fix = f"give {flag} {recorded!r} ({only_named_here[flag]})" if must_repeat.get(flag) else f"drop {flag}"
            raise CommandLineError(
                f"{flag} {value!r}: run {resume} was started with {recorded!r}, and --resume continues it "
                f"as it started: {fix}"
            )
    for flag, (value, recorded) in given.items():
        if must_repeat.get(flag) and value is None:
            what = {"--model": "model you mean to run", "--models": "models you mean to run"}.get(
                flag, "sink you mean to write to"
            )
            raise CommandLineError(
                f"{where} {flag[2:]}: run {resume} was started with {flag} {recorded!r}; {only_named_here[flag]}: "
                f"repeat {flag} {recorded!r} if it is the {what}"
            )
    # Every file it names checked before the broker is reached, and before any is cut.
    for key, target, saved in (("sink", sink, state), ("shadow_sink", shadow_target(sink), shadow_state)):
        if saved is not None:
            try:
                check_resume(Path(target.target), saved, writer=resume, part=part)
            except FileSinkError as exc:
                raise CommandLineError(f"{where} key {key!r}: {exc}") from None
    if from_timestamp is not None:
        raise CommandLineError(f"--from-timestamp: run {resume} keeps its start offsets; drop --from-timestamp")
    candidates = tuple(recorded_models[1:]) if recorded_models is not None else ()
    return Run(resume, p, recorded_model, sink, checkpoint, path, part, candidates=candidates, labels=recorded_labels)


def _shadow_state(checkpoint: Checkpoint, where: str, expected: bool) -> FileState | None:
    """The state of the files the other models of a ``--models`` run to files write; none otherwise."""
    if not expected:
        if checkpoint.shadow_sink is not None:
            raise CommandLineError(f"{where} key 'shadow_sink': only a --models run to files keeps one")
        return None
    if checkpoint.shadow_sink is None:
        raise CommandLineError(
            f"{where} key 'shadow_sink' has value None: expected the lengths of the files the other models write"
        )
    try:
        return FileState.from_json(checkpoint.shadow_sink)
    except FileSinkError as exc:
        raise CommandLineError(f"{where} key 'shadow_sink': {exc}") from None


def _check_models_flags(
    resume: str,
    recorded_models: list[str] | None,
    recorded_model: str | None,
    model: str | None,
    models: tuple[str, ...],
    named_by_file: bool,
) -> None:
    """``--model`` for a ``--models`` run, or ``--models`` for a one-model run: it would change the run."""
    if recorded_models is not None and model is not None:
        started = ",".join(recorded_models)
        fix = f"give --models {started!r} instead" if named_by_file else "drop --model"
        raise CommandLineError(
            f"--model {model!r}: run {resume} was started with --models {started!r}, and --resume continues it as "
            f"it started: {fix}"
        )
    if recorded_models is None and models:
        one = repr(recorded_model) if recorded_model is not None else "the pipeline's own model"
        raise CommandLineError(
            f"--models {','.join(models)!r}: run {resume} was started with one model ({one}), and --resume continues "
            "it as it started: drop --models (to compare models, start a new run)"
        )
