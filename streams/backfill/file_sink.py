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
Before any of that, ``check_resume`` checks every file the state names (anyone who could
write its checkpoint wrote it): names this sink writes, regular files, no links, none short.
Every output carries its source position, so runs can be joined or deduplicated on
(source.topic, source.partition, source.offset).
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from streams.backfill.parquet_parts import ParquetParts
from streams.errors import FileSinkError
from streams.flow.pipeline import PipelineTopics
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


def _tag(part: tuple[int, int]) -> str:
    return "" if part[1] == 1 else f".part{part[0]}of{part[1]}"


def sink_files(path: Path, part: tuple[int, int]) -> tuple[Path, Path]:
    """Where the sink for ``path`` writes predictions and dead letters as process K of N."""
    tag = _tag(part)
    output = path if path.suffix == ".parquet" or not tag else path.with_name(f"{path.stem}{tag}.jsonl")
    return output, path.with_name(f"{path.stem}{tag}.dead-letters.jsonl")


def _lines_files(path: Path, part: tuple[int, int]) -> list[Path]:
    output, dead = sink_files(path, part)
    return [output, dead] if path.suffix == ".jsonl" else [dead]


def _check_counted(file: Path, counts: str, committed: int = 0) -> None:
    """``file`` is a regular file, not a link, of at least ``committed`` bytes."""
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        raise FileSinkError(f"{file} is gone but the checkpoint counts {counts}; start a new run") from None
    except OSError as exc:
        raise FileSinkError(f"{file}: {exc.strerror}; start a new run") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
        raise FileSinkError(f"{file} is {what}, not a file the run wrote; start a new run")
    if info.st_size < committed:
        raise FileSinkError(
            f"{file} holds {info.st_size} bytes but the checkpoint counts {committed}: "
            "it was changed since; start a new run"
        )


def check_resume(
    path: Path, state: FileState, *, writer: str = "out", part: tuple[int, int] = (1, 1)
) -> dict[Path, int]:
    """Every file a resume state names, checked before any is touched: names this sink writes, each
    a regular file, not a link, no shorter than counted. Returns the JSON lines files' counts."""
    writes = _lines_files(path, part)
    names = sorted(file.name for file in writes)
    strays = sorted(set(state.lengths) - set(names))
    if strays:
        raise FileSinkError(
            f"the checkpoint records {', '.join(map(repr, strays))}, which sink {path} does not write "
            f"({', '.join(names)}); start a new run"
        )
    if state.parts and path.suffix != ".parquet":
        raise FileSinkError(f"the checkpoint records Parquet parts, which sink {path} does not write; start a new run")
    prefix = f"{writer}{_tag(part)}"
    for name in state.parts:
        if not re.fullmatch(rf"{re.escape(prefix)}-\d+\.parquet", name):
            raise FileSinkError(f"{path}: {name!r} is not a part this writer ({prefix}) closes")
        _check_counted(path / name, "its rows")
    for file in writes:
        if file.name not in state.lengths:
            raise FileSinkError(f"the checkpoint does not record {file.name}; start a new run")
        _check_counted(file, f"{state.lengths[file.name]:,} bytes of it", state.lengths[file.name])
    return {file: state.lengths[file.name] for file in writes}


def _open_counted(file: Path, committed: int) -> int:
    """A descriptor to append to ``file``, checked again once open: no link followed, no FIFO waited on."""
    try:
        fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileSinkError(f"{file}: {exc.strerror}; start a new run") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size < committed:
        os.close(fd)
        raise FileSinkError(f"{file} changed while the resume checked it; start a new run")
    return fd


class _Lines:
    """An append-only JSON lines file whose committed length is known."""

    def __init__(self, path: Path, fd: int | None = None) -> None:
        self.path = path
        self.file: IO[bytes] = path.open("ab") if fd is None else os.fdopen(fd, "ab")

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
        self.path, self.dead_letters_path = sink_files(path, part)
        self.topics = PipelineTopics(output=str(self.path), dead_letter=str(self.dead_letters_path))
        self._parquet: ParquetParts | None = None
        counted = {} if resume is None else check_resume(path, resume, writer=writer, part=part)
        fds: dict[Path, int] = {}
        try:  # every file checked and opened before any is cut or deleted
            for file, committed in counted.items():
                fds[file] = _open_counted(file, committed)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".parquet":
                self._parquet = ParquetParts(path, f"{writer}{_tag(part)}", resume.parts if resume else None)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        for file, fd in fds.items():  # written after the checkpoint (perhaps a torn last line): scored again
            os.ftruncate(fd, counted[file])
        self._opened = [_Lines(file, fds.get(file)) for file in _lines_files(path, part)]
        self._lines = self._opened[0] if path.suffix == ".jsonl" else None
        self._dead = self._opened[-1]

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
