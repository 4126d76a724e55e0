"""``sluice backfill``'s flags, read: what each may be (``--from-timestamp``, ``--part``, ``--sink``,
``--pipeline``, ``--run-id``, ``--models``, ``--labels``, ``--report``), checked before the broker is
reached or a file written, and ``Run``,
the run they name together. A new run is made here; a resumed one by ``app.backfill_resume``,
with the same parsers applied to what its checkpoint says.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.addresses import is_topic
from app.config import Config, PipelineConfig
from app.labels import parse_labels
from streams.backfill.checkpoint import MAX_PARTS, Checkpoint, checkpoint_path
from streams.backfill.file_sink import check_target
from streams.errors import CheckpointError, CommandLineError, FileSinkError

# The last millisecond datetime can hold (9999-12-31T23:59:59.999Z); Kafka reads -1 as "the latest offset".
MAX_TIMESTAMP_MS = 253_402_300_799_999
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TIMESTAMP_EXPECTED = (
    f"expected milliseconds since the epoch (ASCII digits, 0 to {MAX_TIMESTAMP_MS}) or an ISO 8601 time "
    "from 1970-01-01 to 9999-12-31 (local time unless it gives an offset)"
)


def parse_timestamp(text: str | None) -> int | None:
    """``--from-timestamp``: milliseconds since the epoch in ASCII digits, or an ISO 8601 time
    (local unless it gives an offset), read to the millisecond; None when not given."""
    if text is None:
        return None
    ms: int | None = None
    if re.fullmatch(r"[0-9]{1,16}", text):  # str.isdigit() also takes "²", which int() refuses
        ms = int(text)
    elif text.isascii():
        try:
            ms = (datetime.fromisoformat(text).astimezone(UTC) - EPOCH) // timedelta(milliseconds=1)
        except (ValueError, OverflowError, OSError):  # not ISO 8601, or out of datetime's range
            ms = None
    if ms is None or not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise CommandLineError(f"--from-timestamp {text!r}: {TIMESTAMP_EXPECTED}")
    return ms


def parse_part(text: str) -> tuple[int, int]:
    """``--part K/N``: ASCII digits (N names the checkpoint file), 1 <= K <= N <= MAX_PARTS."""
    match = re.fullmatch(r"([0-9]{1,6})/([0-9]{1,6})", text)
    if match is None or not 1 <= int(match[1]) <= int(match[2]) <= MAX_PARTS:
        raise CommandLineError(f"--part {text!r}: expected K/N (ASCII digits), 1 <= K <= N <= {MAX_PARTS:,}, e.g. 1/3")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class SinkTarget:
    """Where a run's outputs go: ``kafka`` and a topic, or ``file`` and an absolute path."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_sink(text: str, where: str = "--sink") -> SinkTarget:
    """``kafka:TOPIC`` or ``file:PATH.jsonl|.parquet``, checked before anything is opened; the
    same rules for the command line and for the sink a checkpoint names (``where`` says which)."""
    kind, colon, target = text.partition(":")
    if kind == "kafka" and colon:
        if not is_topic(target):
            raise CommandLineError(
                f"{where} {text!r}: {target!r} is not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')"
            )
        return SinkTarget("kafka", target)
    if kind == "file" and colon:
        if not target or "\0" in target:
            raise CommandLineError(f"{where} {text!r}: give a file path after 'file:'")
        path = Path(os.path.abspath(os.path.expanduser(target)))
        try:
            check_target(path)
        except (FileSinkError, OSError) as exc:
            raise CommandLineError(f"{where} {text!r}: {exc}") from None
        return SinkTarget("file", str(path))
    raise CommandLineError(f"{where} {text!r}: expected kafka:TOPIC, file:PATH.jsonl or file:PATH.parquet")


SHADOW_SUFFIX = "-shadow"
MAX_TOPIC = 249


def shadow_target(sink: SinkTarget) -> SinkTarget:
    """Where the other models' outputs go beside ``sink``: topic ``TOPIC-shadow``, or the file (or
    Parquet folder) ``PATH`` with ``-shadow`` before its suffix (``scores.jsonl`` ->
    ``scores-shadow.jsonl``)."""
    if sink.kind == "kafka":
        return SinkTarget("kafka", sink.target + SHADOW_SUFFIX)
    path = Path(sink.target)
    return SinkTarget("file", str(path.with_name(f"{path.stem}{SHADOW_SUFFIX}{path.suffix}")))


def check_shadow_target(sink: SinkTarget, where: str = "--sink") -> None:
    """A sink whose shadow destination can exist: a topic name short enough for the suffix."""
    if sink.kind == "kafka" and len(sink.target) + len(SHADOW_SUFFIX) > MAX_TOPIC:
        raise CommandLineError(
            f"{where} {sink}: with --models the other models write to {sink.target}{SHADOW_SUFFIX}, longer than a "
            f"Kafka topic name may be ({MAX_TOPIC}); give a shorter topic"
        )
    if sink.kind == "file":
        try:
            check_target(Path(shadow_target(sink).target))
        except (FileSinkError, OSError) as exc:
            raise CommandLineError(
                f"{where} {sink}: the other models' outputs go to {shadow_target(sink)}: {exc}"
            ) from None


def parse_models(text: str | None, model: str | None) -> tuple[str, ...]:
    """``--models A,B[,C...]``: two or more model references (as ``--model`` takes), the first the
    champion; not with ``--model``, no name twice. Empty when not given."""
    if text is None:
        return ()
    if model is not None:
        raise CommandLineError(
            f"--models {text!r} and --model {model!r}: give one of them (--models A,B: A serves, B is scored beside it)"
        )
    refs = tuple(ref.strip() for ref in text.split(","))
    if any(not ref for ref in refs):
        raise CommandLineError(f"--models {text!r}: expected model references separated by commas, none empty")
    if len(refs) < 2:
        raise CommandLineError(f"--models {text!r}: name two models or more (one model: --model {refs[0]})")
    twice = sorted({ref for ref in refs if refs.count(ref) > 1})
    if twice:
        raise CommandLineError(f"--models {text!r}: {', '.join(map(repr, twice))} named twice; name each model once")
    return refs


def check_labels(labels: str | None, report: Path | None) -> None:
    """``--labels FIELD|kafka:TOPIC`` read as ``app.labels`` reads it; ``--report`` needs labels."""
    if labels is not None:
        parse_labels(labels)
    elif report is not None:
        raise CommandLineError(
            f"--report {report}: give --labels too (a report compares each model's scores with labels)"
        )


def default_report(run_id: str) -> Path:
    """Where a run's report goes unless ``--report`` says: a folder named after the run, here."""
    return Path("backfill-reports") / run_id


def pipeline_named(config: Config, name: str, where: str = "--pipeline") -> PipelineConfig:
    names = [p.name for p in config.pipelines]
    if name not in names:
        raise CommandLineError(f"{where} {name!r}: no such pipeline in {config.path}; pipelines: {', '.join(names)}")
    return config.pipeline(name)


def run_checkpoint(run_id: str, part: tuple[int, int], state_dir: Path, option: str) -> Path:
    try:
        return checkpoint_path(state_dir, run_id, part)
    except CheckpointError as exc:
        raise CommandLineError(f"{option} {exc}") from None


@dataclass(frozen=True)
class Run:
    """A run to start or continue, every part of it checked."""

    id: str
    pipeline: PipelineConfig
    model: str | None
    sink: SinkTarget
    checkpoint: Checkpoint | None  # None: a new run, checkpointed once its plan is made
    path: Path
    part: tuple[int, int]  # K/N: this process replays every Nth partition, starting at the Kth
    from_timestamp_ms: int | None = None  # where a new run starts (None: each partition's beginning)
    emit_features: bool = False
    crash_after: int | None = None  # the test hook's count of checkpoints (app.backfill_parts)
    # --models: the models scored beside the champion (``model``), their outputs to the shadow sink.
    candidates: tuple[str, ...] = ()
    labels: str | None = None  # --labels FIELD or kafka:TOPIC: an evaluation report at the end
    report: Path | None = None  # where the report goes (None: ``default_report``)

    @property
    def models(self) -> tuple[str | None, ...]:
        """Every model of the run, the champion first (None: the pipeline's own model)."""
        return (self.model, *self.candidates)

    @property
    def report_folder(self) -> Path:
        return self.report if self.report is not None else default_report(self.id)


def new_run(
    config: Config,
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
    """A run to start: its pipeline (default: the config's first), its sink (default: the
    pipeline's backfill topic) and its id (default: the pipeline's name and the time), which
    must name no run already checkpointed for this part. With ``models`` (``parse_models``), the
    first is the run's model and the others its candidates."""
    start_ms = parse_timestamp(from_timestamp)
    p = pipeline_named(config, pipeline_name) if pipeline_name else config.pipelines[0]
    sink = parse_sink(sink_spec or f"kafka:{p.backfill_topic}")
    if models:
        check_shadow_target(sink)
        model = models[0]
    run_id = run_id or f"{p.name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    path = run_checkpoint(run_id, part, state_dir, "--run-id")
    if path.exists():
        k, n = part
        raise CommandLineError(
            f"--run-id {run_id!r}: part {k}/{n} of that run is already checkpointed in {state_dir}; "
            f"continue it with --resume {run_id}, or name a new run"
        )
    return Run(
        run_id, p, model, sink, None, path, part, from_timestamp_ms=start_ms, candidates=models[1:], labels=labels
    )
