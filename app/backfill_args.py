"""``sluice backfill``'s flags, read: what each may be (``--from-timestamp``, ``--part``, ``--sink``,
``--pipeline``, ``--run-id``), checked before the broker is reached or a file written, and ``Run``,
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
) -> Run:
    """A run to start: its pipeline (default: the config's first), its sink (default: the
    pipeline's backfill topic) and its id (default: the pipeline's name and the time), which
    must name no run already checkpointed for this part."""
    start_ms = parse_timestamp(from_timestamp)
    p = pipeline_named(config, pipeline_name) if pipeline_name else config.pipelines[0]
    sink = parse_sink(sink_spec or f"kafka:{p.backfill_topic}")
    run_id = run_id or f"{p.name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    path = run_checkpoint(run_id, part, state_dir, "--run-id")
    if path.exists():
        k, n = part
        raise CommandLineError(
            f"--run-id {run_id!r}: part {k}/{n} of that run is already checkpointed in {state_dir}; "
            f"continue it with --resume {run_id}, or name a new run"
        )
    return Run(run_id, p, model, sink, None, path, part, from_timestamp_ms=start_ms)
