"""``sluice backfill --resume``'s rules: the run a checkpoint describes, checked with the command
line's own rules (``app.backfill_args``), since whoever could write to the state folder wrote its
pipeline, model and sink; and what the command line must, may or must not say again to continue it.
"""

from __future__ import annotations

from pathlib import Path

from app.backfill_args import Run, parse_sink, pipeline_named, run_checkpoint
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
) -> Run:
    """The run a checkpoint describes, checked with the command line's own rules: whoever could
    write to the state folder wrote its pipeline, model and sink."""
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
    # A model file or module only the checkpoint names is never loaded: loading runs code (a
    # module's import, a pickle in an archive), and whoever wrote the checkpoint chose it. The
    # checkpoint's model is compared with the command line's; a demo name or the config's model
    # (null) names no file. "-m" is the command line's own choice, as when the run started.
    recorded_model = run["model"]
    if recorded_model is not None:
        try:
            model_spec(recorded_model, p)  # its form only: nothing is opened or imported
        except CommandLineError as exc:
            raise CommandLineError(f"{where} model: {exc}") from None
    named_by_file = recorded_model is not None and recorded_model not in DEMO_MODELS
    # The same for a file sink: a resume appends to its files and first cuts them back to the
    # lengths the checkpoint counts, so it writes only where the command line says again.
    only_named_here = {
        "--model": "a resume loads a model file or module only when the command line names it",
        "--sink": "a resume writes to a file sink, and cuts it back to the checkpoint, only when the command line "
        "names it",
    }
    must_repeat = {"--model": named_by_file, "--sink": sink.kind == "file"}
    given = {
        "--pipeline": (pipeline_name, p.name),
        "--model": (model, recorded_model),
        "--sink": (str(parse_sink(sink_spec)) if sink_spec else None, str(sink)),
        "--run-id": (run_id, resume),
    }
    for flag, (value, recorded) in given.items():
        if value is not None and value != recorded:
            fix = f"give {flag} {recorded!r} ({only_named_here[flag]})" if must_repeat.get(flag) else f"drop {flag}"
            raise CommandLineError(
                f"{flag} {value!r}: run {resume} was started with {recorded!r}, and --resume continues it "
                f"as it started: {fix}"
            )
    for flag, (value, recorded) in given.items():
        if must_repeat.get(flag) and value is None:
            what = "model you mean to run" if flag == "--model" else "sink you mean to write to"
            raise CommandLineError(
                f"{where} {flag[2:]}: run {resume} was started with {flag} {recorded!r}; {only_named_here[flag]}: "
                f"repeat {flag} {recorded!r} if it is the {what}"
            )
    if state is not None:  # every file it names checked before the broker is reached, and before any is cut
        try:
            check_resume(Path(sink.target), state, writer=resume, part=part)
        except FileSinkError as exc:
            raise CommandLineError(f"{where} key 'sink': {exc}") from None
    if from_timestamp is not None:
        raise CommandLineError(f"--from-timestamp: run {resume} keeps its start offsets; drop --from-timestamp")
    return Run(resume, p, recorded_model, sink, checkpoint, path, part)
