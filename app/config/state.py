"""The config of per-key features: ``[pipelines.NAME.state]`` and the features it declares.

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

A model input names a feature among ``[pipelines.NAME.features] inputs`` (``app.config.features``);
``changelog_topic``, ``key_field`` and ``repartition_topic`` are read by ``app.config.state_topics``.
Errors name the file, the key, the value and what was expected, as for every other key.
"""

from __future__ import annotations

from pathlib import Path

from app.config.table import Table
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
