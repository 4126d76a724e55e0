"""``[app]``: what the whole worker shares (its id, the broker, topics it creates, torch, the web
server, where model decisions are kept).

``$SLUICE_BROKER`` overrides ``broker``; ``[app.security]`` is read by ``app.config.security``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.addresses import BROKER_EXPECTED, HOST_EXPECTED, is_broker_address, is_host, is_topic
from app.config.schema_registry import SchemaRegistryConfig, load_schema_registry
from app.config.security import SecurityConfig, load_security
from app.config.table import Table
from streams.errors import ConfigError

ENV_BROKER = "SLUICE_BROKER"

# The ranges of the numbers (``config/sluice.toml`` and the README say them too).
# Kafka creates at most 10,000 partitions in one request (KAFKA-17870).
MAX_TOPIC_PARTITIONS = 10_000
MAX_TORCH_THREADS = 1024
# torch holds a CUDA device index in 8 bits: "cuda:128" would be read as cuda:-128.
MAX_CUDA_INDEX = 127
DEVICE = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]{0,2}))?")
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


@dataclass(frozen=True)
class AppConfig:
    id: str
    broker: str
    create_topics: bool
    topic_partitions: int
    torch_threads: int
    device: str
    stats_interval_s: float
    web_bind: str
    web_port: int
    admin_token_env: str
    # Frozen, so one default is shared safely (ruff cannot see that from another module).
    security: SecurityConfig = SecurityConfig()  # noqa: RUF009
    # The codec of every record batch sluice produces (outputs, dead letters, `sluice produce`).
    compression: str = "none"
    # The compacted topic of model decisions (promote, roll back, swap) every worker applies:
    # "<id>.model-decisions" unless the file names one.
    decisions_topic: str = ""
    # [app.schema_registry]: where the schemas of non-JSON formats are (None: no registry).
    schema_registry: SchemaRegistryConfig | None = None


def load_app(t: Table, env: Mapping[str, str], base: Path) -> AppConfig:
    """The ``[app]`` table ``t``; ``env`` may name the broker, ``base`` is the config file's folder."""
    broker = _broker(t, env)
    app_id = t.text("id", "sluice")
    app = AppConfig(
        id=app_id,
        broker=broker if "://" in broker else f"kafka://{broker}",
        create_topics=t.flag("create_topics", True),
        topic_partitions=t.integer(
            "topic_partitions",
            4,
            minimum=1,
            maximum=MAX_TOPIC_PARTITIONS,
            why="Kafka creates no more in one request; create larger topics yourself",
        ),
        torch_threads=t.integer("torch_threads", 0, minimum=0, maximum=MAX_TORCH_THREADS),
        device=t.text("device", "auto"),
        stats_interval_s=t.number("stats_interval_s", 10.0, minimum=0.1, maximum=86_400),
        web_bind=_host(t, "web_bind", "127.0.0.1"),
        web_port=t.integer("web_port", 6066, minimum=1, maximum=65_535),
        admin_token_env=t.text("admin_token_env", "SLUICE_ADMIN_TOKEN"),
        compression=t.choice("compression", COMPRESSIONS, "none"),
        security=load_security(t.table("security", default={}), base),
        decisions_topic=_decisions_topic(t, app_id),
        schema_registry=load_schema_registry(t.table("schema_registry"), base) if "schema_registry" in t.data else None,
    )
    match = DEVICE.fullmatch(app.device)
    if match is None or (match.group(1) is not None and int(match.group(1)) > MAX_CUDA_INDEX):
        raise t.fail("device", app.device, f"'auto', 'cpu', 'cuda' or 'cuda:N' (N from 0 to {MAX_CUDA_INDEX})")
    t.done()
    return app


def _decisions_topic(t: Table, app_id: str) -> str:
    topic = t.text("decisions_topic", None) or f"{app_id}.model-decisions"
    if not is_topic(topic):
        expected = "a Kafka topic name: 1 to 249 letters, digits, '.', '_', '-' (by default '<app id>.model-decisions')"
        raise t.fail("decisions_topic", topic, expected)
    return topic


def _host(t: Table, name: str, default: str) -> str:
    value = t.text(name, default)
    if not is_host(value):
        raise t.fail(name, value, HOST_EXPECTED)
    return value


def _broker(t: Table, env: Mapping[str, str]) -> str:
    """``[app] broker`` or ``$SLUICE_BROKER``: comma-separated ``[kafka://]HOST[:PORT]`` addresses."""
    t.seen.add("broker")
    from_env = env.get(ENV_BROKER)
    broker = from_env or t.text("broker", "kafka://127.0.0.1:9092")
    if all(is_broker_address(part) for part in broker.split(",")):
        return broker
    if from_env:
        raise ConfigError(
            f"{t.path}: ${ENV_BROKER} (which overrides key '{t.key('broker')}') has value {broker!r}: "
            f"expected {BROKER_EXPECTED}"
        )
    raise t.fail("broker", broker, BROKER_EXPECTED)
