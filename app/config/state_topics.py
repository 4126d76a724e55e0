"""The topics of a pipeline with per-key state: its changelog and, keyed by an event field, its re-keying stage.

Both sit in ``[pipelines.NAME.state]`` (``changelog_topic``, ``key_field``,
``repartition_topic``) but are read here, with the pipeline's other topics and its consumer
group at hand: each is a topic of its own, named after the group unless the file names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.addresses import is_topic
from app.config.table import Table
from streams.errors import ConfigError
from streams.features.spec import StateSpec

if TYPE_CHECKING:
    from app.config.pipeline import PipelineConfig


@dataclass(frozen=True)
class RekeyConfig:
    """A pipeline keyed by an event field (``state.key_field``): a re-keying stage reads the
    configured input topic and routes each event, keyed by ``field``, to ``topic``, which the
    pipeline consumes (its ``input_topics``) and its backfill replays."""

    field: str
    source_topic: str
    topic: str
    # The re-keying stage's own consumer group (and transactional ids, exactly-once).
    group_id: str


def default_changelog(state: Mapping[str, Any], group_id: str) -> str:
    """The changelog a stateful pipeline gets unless its config names one. Keyed by an event field,
    it has a name of its own: state kept by record key must never be restored as state by field
    (turning key_field on would count every past event twice; with a fresh changelog the
    pipeline rebuilds its state from the re-keyed history instead)."""
    return f"{group_id}-rekeyed-state-changelog" if "key_field" in state else f"{group_id}-state-changelog"


def load_changelog_topic(t: Table, state: StateSpec | None, group_id: str) -> str:
    if state is None:
        return ""
    state_table = t.table("state")
    topic = state_table.text("changelog_topic", default_changelog(state_table.data, group_id))
    others = [*(t.data.get("input_topics") or [])]
    return _own_topic(t, state_table, "changelog_topic", topic, others, "it holds the state, compacted")


def _own_topic(t: Table, state_table: Table, key: str, topic: str, others: list[Any], why: str) -> str:
    """``topic`` if it is none of the pipeline's other topics (``others``, and its output, dead-letter
    and backfill topics) and a valid Kafka topic name (also a folder name: a rocksdb store's)."""
    others = [*others, *(t.data.get(k) for k in ("output_topic", "dead_letter_topic", "backfill_topic"))]
    if topic in others:
        raise state_table.fail(key, topic, f"a topic of its own ({why})")
    if not is_topic(topic):
        raise state_table.fail(key, topic, "a Kafka topic name: letters, digits, '.', '_', '-'")
    return topic


def load_rekey(t: Table, state: StateSpec | None, group_id: str, inputs: tuple[str, ...]) -> RekeyConfig | None:
    if state is None:
        return None
    state_table = t.table("state")
    expected = "the name of the event field holding each event's key (a string or an integer)"
    field = state_table.get("key_field", str, expected, None)
    if field is None:
        if "repartition_topic" in state_table.data:
            raise state_table.fail(
                "repartition_topic",
                state_table.data["repartition_topic"],
                "no repartition topic: set key_field, or remove this key",
            )
        return None
    if not field.strip():
        raise state_table.fail("key_field", field, expected)
    topic = state_table.text("repartition_topic", f"{group_id}-repartition")
    changelog = state_table.data.get("changelog_topic", default_changelog(state_table.data, group_id))
    others = [*inputs, changelog, f"{t.data.get('output_topic', '')}-backfill"]
    _own_topic(t, state_table, "repartition_topic", topic, others, "it holds the re-keyed events")
    return RekeyConfig(field, inputs[0], topic, f"{group_id}-rekey")


def check_late_rekeyed(t: Table, p: PipelineConfig) -> None:
    """Re-keyed events reach the model only when their transaction commits: dead-lettering late
    ones with a budget under the transaction interval would dead-letter most of them."""
    if p.rekey is not None and p.late_events == "dead_letter" and p.latency_budget_ms <= p.transaction_interval_ms:
        raise t.fail(
            "late_events",
            "dead_letter",
            f"'score' with [{t.prefix}.state] key_field: re-keyed events reach the model only when their "
            f"transaction commits (transaction_interval_ms {p.transaction_interval_ms:g}), after latency_budget_ms "
            f"{p.latency_budget_ms:g}",
        )


def check_rekeyed_names(path: Path, pipelines: tuple[PipelineConfig, ...]) -> None:
    """A re-keying stage's metrics are those of "NAME-rekey", and its topic and group are its own."""
    names = {p.name for p in pipelines}
    used: dict[str, set[str]] = {}
    for q in pipelines:
        for topic in (*q.topics, q.changelog_topic, q.backfill_topic, q.rekey.topic if q.rekey else ""):
            used.setdefault(topic, set()).add(q.name)
    for p in pipelines:
        if p.rekey is None:
            continue
        if f"{p.name}-rekey" in names:
            raise ConfigError(
                f"{path}: pipeline '{p.name}-rekey' has the name of pipeline '{p.name}''s re-keying stage "
                "(its metrics); rename it"
            )
        sharing = sorted(used[p.rekey.topic] - {p.name})
        if sharing:
            raise ConfigError(
                f"{path}: key 'pipelines.{p.name}.state.repartition_topic' has value {p.rekey.topic!r}: "
                f"expected a topic of its own (pipeline {sharing[0]!r} uses it)"
            )
        if p.rekey.group_id in {q.group_id for q in pipelines} | {
            q.rekey.group_id for q in pipelines if q.rekey and q is not p
        }:
            raise ConfigError(
                f"{path}: pipeline '{p.name}': its re-keying stage's consumer group {p.rekey.group_id!r} "
                "is another pipeline's group_id; rename one"
            )
