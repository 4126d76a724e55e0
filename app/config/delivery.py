"""A pipeline's delivery guarantee: ``delivery`` and ``transaction_interval_ms`` in ``[pipelines.NAME]``.

"at_least_once" commits offsets after the outputs are acknowledged, every
``commit_interval_ms``; "exactly_once" writes outputs and offsets in one Kafka transaction
per input partition, every ``transaction_interval_ms``. A re-keyed pipeline is transactional
in either mode.
"""

from __future__ import annotations

from typing import Any

from app.config.table import Table
from streams.errors import ConfigError

DELIVERIES = ("at_least_once", "exactly_once")
# aiokafka's transaction_timeout_ms is 60,000: a transaction open longer is aborted by the broker.
MAX_TRANSACTION_INTERVAL_MS = 30_000.0


def load_delivery(t: Table) -> dict[str, Any]:
    """The delivery keys of the ``[pipelines.NAME]`` table ``t``, as ``PipelineConfig`` fields."""
    delivery = t.choice("delivery", DELIVERIES, "at_least_once")
    state = t.data.get("state")
    if isinstance(state, dict) and "key_field" in state:
        # Re-keying is transactional in either mode (an event re-keyed twice would count twice in state).
        return {"delivery": delivery, "transaction_interval_ms": _transaction_interval(t)}
    if delivery == "at_least_once":
        if "transaction_interval_ms" in t.data:
            raise ConfigError(
                f"{t.path}: key '{t.key('transaction_interval_ms')}' would be ignored: key '{t.key('delivery')}' "
                f"is 'at_least_once', which commits every commit_interval_ms; set delivery = 'exactly_once', "
                "or remove the key"
            )
        return {"delivery": delivery}
    topics = t.data.get("input_topics")
    if isinstance(topics, list) and len(topics) > 1:
        # Outputs name their input partition, not its topic: one transactional producer per input
        # partition needs the partition number alone to say which one.
        raise t.fail("input_topics", topics, "a single input topic with delivery = 'exactly_once'")
    return {"delivery": delivery, "transaction_interval_ms": _transaction_interval(t)}


def _transaction_interval(t: Table) -> float:
    why = "a transaction open past the producer's 60,000 ms transaction timeout is aborted by the broker"
    return t.number("transaction_interval_ms", 100.0, minimum=1, maximum=MAX_TRANSACTION_INTERVAL_MS, why=why)
