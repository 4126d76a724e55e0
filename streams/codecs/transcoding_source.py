"""A source whose records arrive in a registry's wire format: each fetch is transcoded before the
batcher sees it (``streams.codecs.schema_transcode``), so the rest of the engine reads JSON objects.

The wait for a registry that cannot be reached happens here, in the fetching task: events behind
it wait in order (a partition is never reordered), the batches already taken are scored, and a
live group member keeps its membership as it does while the model is slow.
"""

from __future__ import annotations

from streams.codecs.schema_transcode import SchemaTranscoder
from streams.records import Partition, SourceRecord
from streams.source import Source


class TranscodingSource:
    def __init__(self, source: Source, transcoder: SchemaTranscoder) -> None:
        self.source = source
        self.transcoder = transcoder

    async def next_batch(self, max_records: int) -> list[SourceRecord]:
        return await self.transcoder.transcode(await self.source.next_batch(max_records))

    async def keep_alive(self) -> list[SourceRecord]:
        return await self.transcoder.transcode(await self.source.keep_alive())

    def backlog(self) -> int:
        return self.source.backlog()

    def lag_by_partition(self) -> dict[Partition, int]:
        return self.source.lag_by_partition()

    @property
    def exhausted(self) -> bool:
        return self.source.exhausted
