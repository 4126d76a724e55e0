"""Whether a pipeline's records fit the broker's limits, checked by the worker once it knows them.

A dead letter must fit its topic's ``max.message.bytes``, and a key's full state its
changelog's and the producer's request limit; the config alone cannot say, the broker can.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.config.pipeline import DEAD_LETTER_OVERHEAD_BYTES, PipelineConfig
from streams.features.snapshot import max_state_bytes
from streams.records import MAX_KEY_BYTES

# A record's framing around its key and value, and the producer's own request limit (aiokafka's
# max_request_size default): a key's state record must fit both.
RECORD_OVERHEAD_BYTES = 256
PRODUCER_REQUEST_BYTES = 1024 * 1024


def dead_letters_too_big(pipeline: PipelineConfig, max_message_bytes: Mapping[str, int]) -> str | None:
    """Why the pipeline's dead letters may not fit its dead-letter topic, or None if they fit.

    A dead letter holds up to ``dead_letter_copy_bytes`` of the value, as much of the key (in its
    body, and as its record key) and of the input's headers, plus its reason and source position."""
    limit = max_message_bytes.get(pipeline.dead_letter_topic)
    largest = 4 * pipeline.dead_letter_copy_bytes + DEAD_LETTER_OVERHEAD_BYTES
    if limit is None or largest <= limit:
        return None
    return (
        f"key 'pipelines.{pipeline.name}.dead_letter_copy_bytes' has value {pipeline.dead_letter_copy_bytes}: "
        f"dead letters of up to {largest} bytes would not fit topic {pipeline.dead_letter_topic!r} "
        f"(max.message.bytes {limit}); expected at most {(limit - DEAD_LETTER_OVERHEAD_BYTES) // 4}"
    )


def state_too_big(pipeline: PipelineConfig, changelog_max_message_bytes: int) -> str | None:
    """Why a key's full state could not be written to the changelog, or None if it fits."""
    if pipeline.state is None:
        return None
    spec = pipeline.state
    need = max_state_bytes(len(spec.fields), spec.capacity) + 1 + MAX_KEY_BYTES + RECORD_OVERHEAD_BYTES
    limit = min(changelog_max_message_bytes, PRODUCER_REQUEST_BYTES)
    if need <= limit:
        return None
    return (
        f"key 'pipelines.{pipeline.name}.state.history_events' ({spec.capacity} events of {len(spec.fields)} "
        f"field(s)): a key's state record can reach {need:,} bytes, over the {limit:,} the changelog "
        f"{pipeline.changelog_topic} and the producer take; keep fewer events or fields per key"
    )
