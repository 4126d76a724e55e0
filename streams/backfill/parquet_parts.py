"""The Parquet half of the file sink: a folder of part files, each closed (footer written,
synced, renamed from its hidden in-progress name) at a checkpoint, so a crash leaves only
parts a reader can read. See ``streams.backfill.file_sink``."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streams.errors import FileSinkError


def sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class ParquetParts:
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
                # --emit-features: a column per feature, "feature.NAME", float64 or nested lists of them.
                + [
                    (f"feature.{name}", _prediction_type(pa, value))
                    for name, value in first.get("features", {}).items()
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
        for name in bodies[0].get("features", {}):
            columns[f"feature.{name}"] = [b["features"][name] for b in bodies]
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
            sync_folder(self.folder)
            self.parts.append(final.name)
            self._writing = None
        return tuple(self.parts)
