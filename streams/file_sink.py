"""A ``Sink`` that writes outputs to files a data team can query: JSON lines or Parquet.

``file:NAME.jsonl`` writes one prediction a line to ``NAME.jsonl``; ``file:NAME.parquet`` writes
a folder ``NAME.parquet/`` of part files, which pyarrow, pandas, Spark and DuckDB
(``'NAME.parquet/*.parquet'``) read as one table. Dead letters go beside, to
``NAME.dead-letters.jsonl``. Process K of N (``--part K/N``) writes ``NAME.partKofN.jsonl``
and ``NAME.partKofN.dead-letters.jsonl``, so no two processes share a file.

A crash leaves only readable rows behind, and the checkpoint knows which: ``commit()`` makes
what was sent durable and returns a ``FileState`` for the checkpoint. For JSON lines that is
each file's length once flushed and synced; for Parquet, the part being written is closed
(its footer written), synced and renamed from a hidden ``.NAME.inprogress`` to its final name,
and the state lists the closed parts. A sink resumed from a state truncates the JSON lines
files to their recorded length (lines written after the checkpoint, a torn last line among
them, are scored again) and deletes this writer's Parquet parts the state does not list.
Every output carries its source position, so runs can be joined or deduplicated on
(source.topic, source.partition, source.offset).
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from streams.errors import FileSinkError
from streams.pipeline import PipelineTopics
from streams.records import OutputRecord

SUFFIXES = (".jsonl", ".parquet")


def check_target(path: Path) -> None:
    """Refuse a target before anything is opened: a wrong suffix, or something in the way
    (a FIFO would block the open; a folder where a file goes, or the reverse)."""
    if path.suffix not in SUFFIXES:
        raise FileSinkError(f"{path}: the file name must end in .jsonl or .parquet")
    if path.name in ("", ".", "..") or path.name.startswith("."):
        raise FileSinkError(f"{path}: give a file name that does not start with a dot")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileSinkError(f"{path}: {parent} is not a folder")
            break
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if path.suffix == ".parquet":
        if stat.S_ISREG(mode):
            raise FileSinkError(
                f"{path} is a file: Parquet output is a folder of part files; give a path that does not exist yet"
            )
        if not stat.S_ISDIR(mode):
            raise FileSinkError(f"{path} exists and is not a folder")
    elif not stat.S_ISREG(mode):
        raise FileSinkError(f"{path} exists and is not a regular file")


@dataclass(frozen=True)
class FileState:
    """What a checkpoint records of a file sink: the bytes of each JSON lines file and the closed Parquet parts."""

    lengths: dict[str, int]
    parts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"lengths": dict(self.lengths), "parts": list(self.parts)}

    @classmethod
    def from_json(cls, data: object) -> FileState:
        if not isinstance(data, dict) or set(data) != {"lengths", "parts"}:
            raise FileSinkError("expected an object with keys 'lengths' and 'parts'")
        lengths, parts = data["lengths"], data["parts"]
        if not isinstance(lengths, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in lengths.items()
        ):
            raise FileSinkError("'lengths' must map file names to byte counts")
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise FileSinkError("'parts' must be a list of file names")
        return cls(dict(lengths), tuple(parts))


def _done() -> Awaitable[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Lines:
    """An append-only JSON lines file whose committed length is known."""

    def __init__(self, path: Path, committed: int | None) -> None:
        self.path = path
        if committed is not None:
            size = path.stat().st_size if path.exists() else -1
            if size < committed:
                raise FileSinkError(
                    f"{path} holds {max(size, 0)} bytes but the checkpoint counts {committed}: "
                    "it was changed since; start a new run"
                )
            if size > committed:  # written after the checkpoint (perhaps a torn last line): scored again
                os.truncate(path, committed)
        self.file: IO[bytes] = path.open("ab")

    def write(self, lines: list[bytes]) -> None:
        self.file.write(b"\n".join(lines) + b"\n")
        self.file.flush()

    def commit(self) -> int:
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()

    def close(self) -> None:
        self.file.close()


class FileSink:
    """Predictions to ``path`` (``.jsonl`` or ``.parquet``), dead letters beside it.

    ``writer`` names this writer's Parquet parts (a run id, say); ``part`` is (K, N) for
    process K of N; ``resume`` is the state of the last checkpoint to continue from. Route
    outputs with ``topics``: the pipeline addresses predictions and dead letters by these labels.
    """

    def __init__(
        self, path: Path, *, writer: str = "out", part: tuple[int, int] = (1, 1), resume: FileState | None = None
    ) -> None:
        check_target(path)
        k, n = part
        tag = "" if n == 1 else f".part{k}of{n}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path if path.suffix == ".parquet" or n == 1 else path.with_name(f"{path.stem}{tag}.jsonl")
        self.dead_letters_path = path.with_name(f"{path.stem}{tag}.dead-letters.jsonl")
        self.topics = PipelineTopics(output=str(self.path), dead_letter=str(self.dead_letters_path))
        lengths = resume.lengths if resume is not None else {}
        self._opened: list[_Lines] = []
        self._lines: _Lines | None = None
        self._parquet: _ParquetParts | None = None
        if path.suffix == ".jsonl":
            self._lines = self._open_lines(self.path, lengths, resume is not None)
        else:
            self._parquet = _ParquetParts(path, f"{writer}{tag}", resume.parts if resume is not None else None)
        self._dead = self._open_lines(self.dead_letters_path, lengths, resume is not None)

    def _open_lines(self, path: Path, lengths: Mapping[str, int], resuming: bool) -> _Lines:
        if resuming and path.name not in lengths:
            raise FileSinkError(f"the checkpoint does not record {path.name}; start a new run")
        lines = _Lines(path, lengths[path.name] if resuming else None)
        self._opened.append(lines)
        return lines

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        predictions: list[bytes] = []
        dead: list[bytes] = []
        for record in records:
            if record.topic == self.topics.output:
                predictions.append(record.value)
            elif record.topic == self.topics.dead_letter:
                dead.append(record.value)
            else:
                raise ValueError(f"file sink {self.path}: an output addressed to {record.topic!r}, not to its topics")
        if predictions:
            if self._lines is not None:
                self._lines.write(predictions)
            elif self._parquet is not None:
                self._parquet.write([orjson.loads(v) for v in predictions])
        if dead:
            self._dead.write(dead)
        return _done()

    def commit(self) -> FileState:
        """Make every output sent so far durable and readable; what a checkpoint records."""
        parts = self._parquet.commit() if self._parquet is not None else ()
        return FileState({lines.path.name: lines.commit() for lines in self._opened}, parts)

    def close(self) -> None:
        self.commit()
        self.abort()

    def abort(self) -> None:
        """Close without a commit: what was sent since the last one stays uncounted, as after a crash."""
        if self._parquet is not None:
            self._parquet.abort()
        for lines in self._opened:
            lines.close()


def _prediction_type(pa: Any, value: Any) -> Any:
    """float64, or a list (of lists...) of float64 for a model with several outputs."""
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    kind = pa.float64()
    for _ in range(depth):
        kind = pa.list_(kind)
    return kind


class _ParquetParts:
    """A folder of Parquet part files: ``PREFIX-00000.parquet``, ... each closed at a commit."""

    def __init__(self, folder: Path, prefix: str, resume: Sequence[str] | None) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the environment
            raise FileSinkError("writing .parquet needs pyarrow: pip install 'sluice[parquet]'") from None
        self._pa, self._pq = pa, pq
        self.folder = folder
        self.prefix = prefix
        pattern = re.compile(rf"\.?{re.escape(prefix)}-(\d+)\.parquet(\.inprogress)?")
        folder.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []
        if resume is not None:
            for name in resume:
                match = pattern.fullmatch(name)
                if match is None or name.startswith(".") or match.group(2):
                    raise FileSinkError(f"{folder}: {name!r} is not a part this writer ({prefix}) closes")
                if not (folder / name).is_file():
                    raise FileSinkError(f"{folder / name} is gone but the checkpoint counts its rows; start a new run")
                self.parts.append(name)
            # Parts in progress at a crash, or closed after the last checkpoint: their rows are scored again.
            for leftover in sorted(folder.iterdir()):
                if pattern.fullmatch(leftover.name) and leftover.name not in self.parts:
                    leftover.unlink()
        taken = [int(m.group(1)) for m in map(pattern.fullmatch, os.listdir(folder)) if m]
        self._next = max(taken, default=-1) + 1
        self._writer: Any = None
        self._writing: Path | None = None
        self._schema: Any = None

    def _open(self, first: dict[str, Any]) -> None:
        pa = self._pa
        if self._schema is None:
            self._schema = pa.schema(
                [
                    ("id", pa.string()),
                    ("prediction", _prediction_type(pa, first.get("prediction"))),
                    ("model", pa.string()),
                    ("model_version", pa.string()),
                    ("source_topic", pa.string()),
                    ("source_partition", pa.int32()),
                    ("source_offset", pa.int64()),
                    ("event_ts", pa.int64()),
                    ("latency_ms", pa.int64()),
                ]
            )
        self._writing = self.folder / f".{self.prefix}-{self._next:05d}.parquet.inprogress"
        self._next += 1
        self._writer = self._pq.ParquetWriter(str(self._writing), self._schema)

    def write(self, bodies: list[dict[str, Any]]) -> None:
        if self._writer is None:
            self._open(bodies[0])
        columns = {
            "id": [str(b["id"]) for b in bodies],
            "prediction": [b["prediction"] for b in bodies],
            "model": [b["model"] for b in bodies],
            "model_version": [b["model_version"] for b in bodies],
            "source_topic": [b["source"]["topic"] for b in bodies],
            "source_partition": [b["source"]["partition"] for b in bodies],
            "source_offset": [b["source"]["offset"] for b in bodies],
            "event_ts": [b.get("event_ts") for b in bodies],
            "latency_ms": [b.get("latency_ms") for b in bodies],
        }
        self._writer.write_table(self._pa.table(columns, schema=self._schema))

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()  # under its hidden name: a resume deletes it
            self._writer = None

    def commit(self) -> tuple[str, ...]:
        if self._writer is not None and self._writing is not None:
            self._writer.close()
            self._writer = None
            with self._writing.open("rb") as written:
                os.fsync(written.fileno())
            final = self._writing.with_name(self._writing.name[1 : -len(".inprogress")])
            os.replace(self._writing, final)
            _sync_folder(self.folder)
            self.parts.append(final.name)
            self._writing = None
        return tuple(self.parts)
