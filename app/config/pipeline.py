"""``[pipelines.NAME]``: one pipeline's topics, batching, deadlines, dead letters and consumer group.

Its sub-tables are read by their own modules: ``model`` (``[pipelines.NAME.model]``),
``features`` (``[pipelines.NAME.features]``), ``state`` and ``state_topics``
(``[pipelines.NAME.state]``), and ``delivery`` its delivery guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from app.addresses import is_topic
from app.config.delivery import load_delivery
from app.config.features import load_inputs, load_schema
from app.config.model import default_model_dirs, load_model
from app.config.roles import RolesConfig, load_roles
from app.config.state import load_state
from app.config.state_topics import RekeyConfig, check_late_rekeyed, load_changelog_topic, load_rekey
from app.config.table import Table
from models.spec import ModelSpec
from streams.codecs.codec import EventSchema
from streams.codecs.dead_letters import DEFAULT_MAX_COPY_BYTES
from streams.features.spec import StateSpec
from streams.flow.stateful_inputs import ModelInput
from streams.records import HeaderPolicy

# How input values may be written: JSON, or a schema registry's wire format.
FORMATS = ("json", "avro", "protobuf", "json_schema")
# How predictions are written: JSON, or Avro in the registry's wire format (``app.avro_outputs``).
OUTPUT_FORMATS = ("json", "avro")
# Below this a dead letter could not even hold the start of a typical event.
MIN_COPY_BYTES = 256
# Everything in a dead letter but the copies: the reason (at most 2,000 characters, which
# escaping can grow), the source position, names and the record's own framing.
DEAD_LETTER_OVERHEAD_BYTES = 16 * 1024

# The ranges of the numbers (``config/sluice.toml`` and the README say them too).
# Kafka's largest record is 2 GiB less a byte (its sizes are 32-bit).
MAX_RECORD_BYTES = 2**31 - 1
# A dead letter holds up to four copies (value, key, record key, headers) and its overhead.
MAX_COPY_BYTES = (MAX_RECORD_BYTES - DEAD_LETTER_OVERHEAD_BYTES) // 4
MAX_BATCH_SIZE = 65_536
MAX_POLL_MS = 60_000
MAX_COMMIT_INTERVAL_MS = 3_600_000.0


@dataclass(frozen=True)
class PipelineConfig:
    name: str
    input_topics: tuple[str, ...]
    output_topic: str
    dead_letter_topic: str
    backfill_topic: str
    model: ModelSpec
    schema: EventSchema
    max_batch_size: int
    poll_ms: int
    latency_budget_ms: float
    deadline_from: str
    late_events: str
    max_fill_wait_ms: float
    commit_interval_ms: float
    model_dirs: tuple[Path, ...]
    # The consumer group: "<app id>.<pipeline>" unless the file names one (see group_id in sluice.toml).
    group_id: str = ""
    dead_letter_copy_bytes: int = DEFAULT_MAX_COPY_BYTES
    headers: HeaderPolicy = "all"
    # "at_least_once" (offsets committed after outputs are acknowledged) or "exactly_once"
    # (outputs and offsets in one Kafka transaction per input partition, every transaction_interval_ms).
    delivery: str = "at_least_once"
    transaction_interval_ms: float = 100.0
    # The model's inputs in forward() order (event fields and per-key features); the schema
    # decodes the event fields among them and the numbers the state keeps.
    inputs: tuple[ModelInput, ...] = ()
    # Per-key features ([pipelines.NAME.state]) and the compacted topic their state is restored from.
    state: StateSpec | None = None
    changelog_topic: str = ""
    # Live outputs carry each event's per-key features too (the backfill's --emit-features).
    emit_features: bool = False
    # Keyed by an event field: the re-keying stage ahead, and ``input_topics`` is its repartition topic.
    rekey: RekeyConfig | None = None
    # The models beside the champion (canary, fallback, shadows) and the champion's circuit breaker.
    roles: RolesConfig = field(default_factory=RolesConfig)
    # How input values are written: "json", or a schema registry's wire format ("avro", "protobuf", "json_schema").
    format: str = "json"
    # How predictions are written: "json", or "avro" with a schema registered under "<output topic>-value".
    output_format: str = "json"

    @property
    def source_topics(self) -> tuple[str, ...]:
        """The topics the producers write: the input topics, or those the re-keying stage reads."""
        return (self.rekey.source_topic,) if self.rekey is not None else self.input_topics

    @property
    def topics(self) -> list[str]:
        """Every topic the pipeline reads or writes (a repartition topic is checked on its own)."""
        shadows = [self.roles.shadow_topic] if self.roles.shadows else []
        return [*self.source_topics, self.output_topic, self.dead_letter_topic, *shadows]

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """The shape per event of each model input, in forward() order."""
        return [i.shape for i in self.inputs] if self.inputs else [f.shape for f in self.schema.inputs]


def load_pipeline(t: Table, name: str, base: Path, app_id: str) -> PipelineConfig:
    """The ``[pipelines.NAME]`` table ``t``; ``base`` is the config file's folder, ``app_id`` names its group."""
    max_payload = t.integer(
        "max_payload_bytes", 1 << 20, minimum=1, maximum=MAX_RECORD_BYTES, why="Kafka's largest record"
    )
    state_key = f"{t.prefix}.state"
    state = load_state(t.table("state"), base) if "state" in t.data else None
    features = t.table("features")
    inputs = load_inputs(features, state, state_key, max_payload)
    topics = t.data.get("input_topics")
    if state is not None and isinstance(topics, list) and len(topics) > 1:
        # State lives per input partition, and its changelog partition is the input partition's number.
        raise t.fail("input_topics", topics, f"a single input topic for a pipeline with [{state_key}]")
    group_id = t.text("group_id", f"{app_id}.{name}")
    input_topics = _topics(t, "input_topics")
    rekey = load_rekey(t, state, group_id, input_topics)
    pipeline = PipelineConfig(
        name=name,
        input_topics=input_topics if rekey is None else (rekey.topic,),
        rekey=rekey,
        output_topic=_topic(t, "output_topic"),
        dead_letter_topic=_topic(t, "dead_letter_topic"),
        backfill_topic=_topic(t, "backfill_topic", None) or f"{t.data.get('output_topic', '')}-backfill",
        model=load_model(t.table("model"), base),
        schema=load_schema(features, inputs, state, max_payload),
        inputs=inputs,
        state=state,
        changelog_topic=load_changelog_topic(t, state, group_id),
        emit_features=_emit_features(t, state),
        format=t.choice("format", FORMATS, "json"),
        output_format=t.choice("output_format", OUTPUT_FORMATS, "json"),
        max_batch_size=t.integer("max_batch_size", 512, minimum=1, maximum=MAX_BATCH_SIZE),
        poll_ms=t.integer("poll_ms", 100, minimum=1, maximum=MAX_POLL_MS),
        # inf: no deadline (batches as large as max_batch_size allows, nothing ever late).
        latency_budget_ms=t.number("latency_budget_ms", 50.0, minimum=0, above=True, maximum=math.inf),
        deadline_from=t.choice("deadline_from", ("event", "arrival"), "event"),
        late_events=t.choice("late_events", ("score", "dead_letter"), "score"),
        # inf: wait for a fuller batch as long as an idle fetch would (see app.build.live_fetch_pacing).
        max_fill_wait_ms=t.number("max_fill_wait_ms", 5.0, minimum=0, maximum=math.inf),
        commit_interval_ms=t.number("commit_interval_ms", 1000.0, minimum=1, maximum=MAX_COMMIT_INTERVAL_MS),
        model_dirs=(),
        # Two apps on one cluster may both name a pipeline "fraud": the app id keeps their groups apart.
        group_id=group_id,
        dead_letter_copy_bytes=t.integer(
            "dead_letter_copy_bytes",
            DEFAULT_MAX_COPY_BYTES,
            minimum=MIN_COPY_BYTES,
            maximum=MAX_COPY_BYTES,
            why="four copies and the rest of a dead letter must fit Kafka's largest record",
        ),
        headers=_headers(t),
        **load_delivery(t),
    )
    dirs = t.get("model_dirs", list, "a list of folders new models may be loaded from", None)
    if dirs is None:
        dirs = default_model_dirs(pipeline.model)
    elif not all(isinstance(d, str) and d.strip() for d in dirs):
        raise t.fail("model_dirs", dirs, "a list of folders new models may be loaded from")
    else:
        dirs = [base / d if not Path(d).is_absolute() else Path(d) for d in dirs]
    check_late_rekeyed(t, pipeline)
    roles = load_roles(t, base, pipeline.output_topic, pipeline.latency_budget_ms)
    t.done()
    return replace(pipeline, model_dirs=tuple(dirs), roles=roles)


def _topics(t: Table, name: str) -> tuple[str, ...]:
    expected = "a non-empty list of Kafka topic names (letters, digits, '.', '_', '-')"
    value = t.get(name, list, expected)
    if not value or not all(isinstance(v, str) and is_topic(v) for v in value):
        raise t.fail(name, value, expected)
    return tuple(value)


def _topic(t: Table, name: str, default: Any = ...) -> str:
    value = t.text(name, default)
    if value is not None and not is_topic(value):
        raise t.fail(name, value, "a Kafka topic name: 1 to 249 letters, digits, '.', '_', '-'")
    return value


def _emit_features(t: Table, state: StateSpec | None) -> bool:
    emit = t.flag("emit_features", False)
    if emit and state is None:
        raise t.fail("emit_features", emit, f"false: there are no per-key features without [{t.prefix}.state]")
    return emit


def _headers(t: Table) -> HeaderPolicy:
    expected = "true (carry every input header to the outputs), false, or a list of header names"
    value = t.get("headers", (bool, list), expected, True)
    if isinstance(value, bool):
        return "all" if value else "none"
    if not all(isinstance(v, str) and v for v in value):
        raise t.fail("headers", value, expected)
    return tuple(value)
