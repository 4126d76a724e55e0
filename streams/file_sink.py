"""A ``Sink`` that writes outputs to a file a data team can query: JSON lines or Parquet.

Predictions go to the file; dead letters to a sibling file (``NAME.dead-letters.jsonl``).
A batch is acknowledged once it is written and flushed to the operating system, so a
checkpoint taken after it never points past what the file holds. Every output carries its
source position, so a resumed or repeated run can be deduplicated on
(source.topic, source.partition, source.offset).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from streams.records import OutputRecord

PARQUET_COLUMNS = (
    "id",
    "prediction",
    "model",
    "model_version",
    "source_topic",
    "source_partition",
    "source_offset",
    "event_ts",
    "latency_ms",
)


def _done() -> Awaitable[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


class FileSink:
    def __init__(self, path: Path, *, output_topic: str) -> None:
        if path.suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"file sink {path}: the extension must be .jsonl or .parquet")
        self.path = path
        self.output_topic = output_topic
        path.parent.mkdir(parents=True, exist_ok=True)
        self._dead: IO[bytes] = (path.parent / f"{path.stem}.dead-letters.jsonl").open("ab")
        self._lines: IO[bytes] | None = None
        self._parquet: Any = None
        if path.suffix == ".jsonl":
            self._lines = path.open("ab")
        else:
            self._parquet = _ParquetAppender(path)

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        predictions = [r.value for r in records if r.topic == self.output_topic]
        dead = [r.value for r in records if r.topic != self.output_topic]
        if predictions:
            if self._lines is not None:
                self._lines.write(b"\n".join(predictions) + b"\n")
                self._lines.flush()
            else:
                self._parquet.write([orjson.loads(v) for v in predictions])
        if dead:
            self._dead.write(b"\n".join(dead) + b"\n")
            self._dead.flush()
        return _done()

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
        if self._parquet is not None:
            self._parquet.close()
        self._dead.close()


class _ParquetAppender:
    """Parquet files cannot be appended to: a resumed run writes ``NAME.partN.parquet`` beside."""

    def __init__(self, path: Path) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the environment
            raise RuntimeError("writing .parquet needs pyarrow: pip install 'sluice[parquet]'") from None
        self._pa, self._pq = pa, pq
        part, target = 1, path
        while target.exists():
            target = path.with_name(f"{path.stem}.part{part}.parquet")
            part += 1
        self.path = target
        self._schema = pa.schema(
            [
                ("id", pa.string()),
                ("prediction", pa.float64()),
                ("model", pa.string()),
                ("model_version", pa.string()),
                ("source_topic", pa.string()),
                ("source_partition", pa.int32()),
                ("source_offset", pa.int64()),
                ("event_ts", pa.int64()),
                ("latency_ms", pa.int64()),
            ]
        )
        self._writer = pq.ParquetWriter(str(target), self._schema)

    def write(self, bodies: list[dict[str, Any]]) -> None:
        columns = {
            "id": [str(b["id"]) for b in bodies],
            "prediction": [b["prediction"] for b in bodies],
            "model": [b["model"] for b in bodies],
            "model_version": [b["model_version"] for b in bodies],
            "source_topic": [b["source"]["topic"] for b in bodies],
            "source_partition": [b["source"]["partition"] for b in bodies],
            "source_offset": [b["source"]["offset"] for b in bodies],
            "event_ts": [b["event_ts"] for b in bodies],
            "latency_ms": [b["latency_ms"] for b in bodies],
        }
        self._writer.write_table(self._pa.table(columns, schema=self._schema))

    def close(self) -> None:
        self._writer.close()
