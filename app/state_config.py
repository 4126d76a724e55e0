"""The config of per-key features: ``[pipelines.NAME.state]`` and the model inputs that name them.

    [pipelines.NAME.state]
    ttl_s = 604800              # forget a key idle this long (event time)
    history_events = 64         # events kept per key: no window sees more
    store = "memory"            # or "rocksdb": state larger than memory, restarts read less
    directory = "state"         # rocksdb: its databases (relative to this file)
    cache_keys = 100000         # rocksdb: keys kept in memory
    key_field = "account"       # key by this event field, not the record key (re-keyed through a topic)
    [pipelines.NAME.state.features]
    history = { kind = "last", n = 16, fields = ["amount"], mask = true, include_current = true }
    spend_1h = { kind = "sum", field = "amount", window_s = 3600 }
    gap = { kind = "since_previous" }

and, among ``[pipelines.NAME.features] inputs``, ``{ feature = "history" }`` beside
``{ field = "features", shape = [32] }``. Errors name the file, the key, the value and what
was expected, as for every other key.
"""

from __future__ import annotations

import math
from pathlib import Path

from app.config_table import Table
from streams.errors import ConfigError
from streams.features.spec import (
    MAX_DURATION_MS,
    MAX_HISTORY_EVENTS,
    WINDOW_KINDS,
    Feature,
    LastEvents,
    SincePrevious,
    StateSpec,
    Window,
)
from streams.flow.stateful_inputs import ModelInput

KINDS = ("last", "since_previous", *WINDOW_KINDS)
# Keys a rocksdb store keeps in memory: a billion is already far more than a host holds.
MAX_CACHE_KEYS = 1_000_000_000
_FIELD = "the name of an event field holding a number"


def load_state(t: Table, base: Path) -> StateSpec:
    features_table = t.table("features")
    features = tuple(_feature(features_table.table(name), name) for name in list(features_table.data))
    features_table.done()
    if not features:
        raise ConfigError(
            f"{t.path}: key '{t.key('features')}' declares no feature: expected at least one NAME = {{ kind = ... }}"
        )
    spec = StateSpec(
        features=features,
        ttl_ms=_duration_ms(t, "ttl_s", 7 * 24 * 3600.0),
        history_events=_count(t, "history_events", 64),
        store=t.choice("store", ("memory", "rocksdb"), "memory"),  # type: ignore[arg-type]
        directory=_directory(t, base),
        cache_keys=t.integer("cache_keys", 100_000, minimum=1, maximum=MAX_CACHE_KEYS),
    )
    # Read by the pipeline, which knows their defaults (they are named after its consumer group).
    t.seen.update(("changelog_topic", "key_field", "repartition_topic"))
    t.done()
    return spec


def _feature(t: Table, name: str) -> Feature:
    kind = t.choice("kind", KINDS)
    include_current = t.flag("include_current", False)
    feature: Feature
    if kind == "last":
        expected = f"a non-empty list of distinct event field names, each {_FIELD}"
        fields = t.get("fields", list, expected)
        if not fields or not all(isinstance(f, str) and f.strip() for f in fields) or len(set(fields)) < len(fields):
            raise t.fail("fields", fields, expected)
        feature = LastEvents(name, _count(t, "n"), tuple(fields), t.flag("mask", False), include_current)
    elif kind == "since_previous":
        if include_current:
            raise t.fail("include_current", True, "false: the time since the previous event never includes this one")
        feature = SincePrevious(name)
    else:
        field = None if kind == "count" else t.text("field")
        window_ms = _duration_ms(t, "window_s")
        feature = Window(name, kind, field, window_ms, include_current)  # type: ignore[arg-type]
    t.done()
    return feature


def _duration_ms(t: Table, name: str, default: float | None = None) -> int:
    """Seconds in the file, whole milliseconds here: at least 1 ms, at most about a century."""
    expected = f"a number of seconds from 0.001 to {MAX_DURATION_MS // 1000:,}"
    value = t.get(name, (int, float), expected, ... if default is None else default)
    if not 0.001 <= value <= MAX_DURATION_MS / 1000:  # also refuses NaN and infinity
        raise t.fail(name, value, expected)
    return round(1000 * value)


def _directory(t: Table, base: Path) -> Path:
    """Where a "rocksdb" store keeps its databases: relative to the config file, as every path here."""
    value = t.text("directory", "state")
    if "\0" in value:
        raise t.fail("directory", value, "a folder path")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _count(t: Table, name: str, default: int | None = None) -> int:
    default_value = ... if default is None else default
    return t.integer(name, default_value, minimum=1, maximum=MAX_HISTORY_EVENTS, why="events kept per key")


def load_inputs(t: Table, state: StateSpec | None, state_key: str, max_payload: int) -> tuple[ModelInput, ...]:
    """The model's inputs, in ``forward`` order: event fields (with a shape) or declared features.

    An event field holds no more numbers than an event of ``max_payload`` bytes can: the
    smallest JSON array of n numbers, ``[0,0,...]``, is 2n + 1 bytes. (A shape of 2**31 once
    loaded, to fail when the first batch was allocated.)"""
    expected = "a list of {field = NAME, shape = [N, ...]} or {feature = NAME} tables"
    raw = t.get("inputs", list, expected)
    if not raw or not all(isinstance(item, dict) for item in raw):
        raise t.fail("inputs", raw, expected)
    inputs = []
    for i, item in enumerate(raw):
        entry = Table(t.path, f"{t.key('inputs')}[{i}]", item)
        if "feature" in item:
            inputs.append(_feature_input(entry, state, state_key))
        else:
            shape = entry.get("shape", list, "a list of positive integers, e.g. [32]")
            if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
                raise entry.fail("shape", shape, "a list of positive integers, e.g. [32]")
            most = (max_payload - 1) // 2
            if math.prod(shape) > most:
                expected = (
                    f"a list of positive integers, e.g. [32], of at most {most:,} numbers in all "
                    f"(an event of max_payload_bytes {max_payload:,} holds no more)"
                )
                raise entry.fail("shape", shape, expected)
            inputs.append(ModelInput(entry.text("field"), tuple(shape)))
        entry.done()
    if state is not None:
        shapes = {i.name: i.shape for i in inputs if not i.from_state}
        for name in state.fields:
            if shapes.get(name, ()) != ():
                raise ConfigError(
                    f"{t.path}: field {name!r} is a model input of shape {list(shapes[name])} in '{t.key('inputs')}' "
                    f"and a number the features under [{state_key}] read: expected one number per event"
                )
    return tuple(inputs)


def _feature_input(entry: Table, state: StateSpec | None, state_key: str) -> ModelInput:
    name = entry.text("feature")
    if state is None:
        expected = f"a feature declared under [{state_key}.features], but there is no [{state_key}] table"
        raise entry.fail("feature", name, expected)
    try:
        feature = state.feature(name)
    except KeyError:
        declared = [f.name for f in state.features]
        expected = f"one of the features declared under [{state_key}.features]: {declared}"
        raise entry.fail("feature", name, expected) from None
    return ModelInput(name, feature.shape, from_state=True)
