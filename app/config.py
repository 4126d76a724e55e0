"""sluice's config file: TOML, read once at start-up into frozen dataclasses.

Every command reads the file named by ``--config PATH``, else ``$SLUICE_CONFIG``, else
``config/sluice.toml``. Any mistake fails at start-up with one line naming the file,
the key, the value and what was expected; ``config/sluice.toml`` documents every key.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.addresses import BROKER_EXPECTED, HOST_EXPECTED, is_broker_address, is_host, is_topic
from app.config_table import Table as _Table
from app.state_config import load_inputs, load_state
from models.spec import WEIGHTS_DIR, ModelSpec
from streams.codecs.codec import EventSchema
from streams.codecs.dead_letters import DEFAULT_MAX_COPY_BYTES
from streams.errors import ConfigError
from streams.features.snapshot import max_state_bytes
from streams.features.spec import StateSpec
from streams.flow.stateful_inputs import ModelInput, decoded_fields
from streams.records import MAX_KEY_BYTES, HeaderPolicy

# Below this a dead letter could not even hold the start of a typical event.
MIN_COPY_BYTES = 256
# Everything in a dead letter but the copies: the reason (at most 2,000 characters, which
# escaping can grow), the source position, names and the record's own framing.
DEAD_LETTER_OVERHEAD_BYTES = 16 * 1024

DEFAULT_PATH = Path("config/sluice.toml")
ENV_PATH = "SLUICE_CONFIG"
ENV_BROKER = "SLUICE_BROKER"


# The ranges of the numbers (``config/sluice.toml`` and the README say them too).
# Kafka creates at most 10,000 partitions in one request (KAFKA-17870).
MAX_TOPIC_PARTITIONS = 10_000
MAX_TORCH_THREADS = 1024
# Kafka's largest record is 2 GiB less a byte (its sizes are 32-bit).
MAX_RECORD_BYTES = 2**31 - 1
# A dead letter holds up to four copies (value, key, record key, headers) and its overhead.
MAX_COPY_BYTES = (MAX_RECORD_BYTES - DEAD_LETTER_OVERHEAD_BYTES) // 4
MAX_BATCH_SIZE = 65_536
MAX_POLL_MS = 60_000
MAX_COMMIT_INTERVAL_MS = 3_600_000.0
# aiokafka's transaction_timeout_ms is 60,000: a transaction open longer is aborted by the broker.
MAX_TRANSACTION_INTERVAL_MS = 30_000.0
# torch holds a CUDA device index in 8 bits: "cuda:128" would be read as cuda:-128.
MAX_CUDA_INDEX = 127
DEVICE = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]{0,2}))?")
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
DELIVERIES = ("at_least_once", "exactly_once")


@dataclass(frozen=True)
class SecurityConfig:
    """How to reach a secured cluster. Secrets are never in the file: only the names of the
    environment variables that hold them, read when a client connects."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username_env: str | None = None
    sasl_password_env: str | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password_env: str | None = None
    ssl_check_hostname: bool = True

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")


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
    security: SecurityConfig = SecurityConfig()
    # The codec of every record batch sluice produces (outputs, dead letters, `sluice produce`).
    compression: str = "none"


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

    @property
    def source_topics(self) -> tuple[str, ...]:
        """The topics the producers write: the input topics, or those the re-keying stage reads."""
        return (self.rekey.source_topic,) if self.rekey is not None else self.input_topics

    @property
    def topics(self) -> list[str]:
        """Every topic the pipeline reads or writes (a repartition topic is checked on its own)."""
        return [*self.source_topics, self.output_topic, self.dead_letter_topic]

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """The shape per event of each model input, in forward() order."""
        return [i.shape for i in self.inputs] if self.inputs else [f.shape for f in self.schema.inputs]


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


@dataclass(frozen=True)
class Config:
    path: Path
    app: AppConfig
    pipelines: tuple[PipelineConfig, ...]

    def pipeline(self, name: str) -> PipelineConfig:
        for p in self.pipelines:
            if p.name == name:
                return p
        raise ConfigError(f"{self.path}: no pipeline named {name!r}; pipelines: {[p.name for p in self.pipelines]}")

    @property
    def bootstrap_servers(self) -> str:
        """The broker URL without Faust's ``kafka://`` scheme, as aiokafka wants it."""
        return ",".join(part.split("://", 1)[-1] for part in self.app.broker.split(","))


def resolve_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get(ENV_PATH) or DEFAULT_PATH)


def load_config(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    path = resolve_path(explicit)
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (set --config PATH or ${ENV_PATH})") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    root = _Table(path, "", raw)
    app = _load_app(root.table("app", default={}), env, path.parent)
    pipelines_table = root.table("pipelines", default={})
    pipelines = tuple(
        _load_pipeline(pipelines_table.table(name), name, path.parent, app.id) for name in list(pipelines_table.data)
    )
    pipelines_table.done()
    if not pipelines:
        raise ConfigError(f"{path}: key 'pipelines' has no pipeline: expected at least one [pipelines.NAME] table")
    _check_rekeyed_names(path, pipelines)
    root.done()
    return Config(path=path, app=app, pipelines=pipelines)


def _load_app(t: _Table, env: Mapping[str, str], base: Path) -> AppConfig:
    broker = _broker(t, env)
    app = AppConfig(
        id=t.text("id", "sluice"),
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
        security=_load_security(t.table("security", default={}), base),
    )
    match = DEVICE.fullmatch(app.device)
    if match is None or (match.group(1) is not None and int(match.group(1)) > MAX_CUDA_INDEX):
        raise t.fail("device", app.device, f"'auto', 'cpu', 'cuda' or 'cuda:N' (N from 0 to {MAX_CUDA_INDEX})")
    t.done()
    return app


def _host(t: _Table, name: str, default: str) -> str:
    value = t.text(name, default)
    if not is_host(value):
        raise t.fail(name, value, HOST_EXPECTED)
    return value


def _broker(t: _Table, env: Mapping[str, str]) -> str:
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


def _load_security(t: _Table, base: Path) -> SecurityConfig:
    def file(name: str) -> Path | None:
        value = t.text(name, None)
        if value is None:
            return None
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise t.fail(name, value, f"an existing file (looked at {path})")
        return path

    protocol = t.choice("protocol", PROTOCOLS, "PLAINTEXT")
    # Keys the protocol would not use are a mistake, not a default: a user who set a SASL password
    # or a CA file believes the connection is authenticated or encrypted.
    sasl_keys = ("sasl_mechanism", "sasl_username_env", "sasl_password_env")
    tls_keys = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password_env", "ssl_check_hostname")
    for keys, kind, used, protocols in (
        (sasl_keys, "SASL", protocol.startswith("SASL_"), "'SASL_PLAINTEXT' or 'SASL_SSL'"),
        (tls_keys, "TLS", protocol in ("SSL", "SASL_SSL"), "'SSL' or 'SASL_SSL'"),
    ):
        unused = [f"'{t.key(k)}'" for k in keys if k in t.data]
        if unused and not used:
            raise ConfigError(
                f"{t.path}: key(s) {', '.join(unused)} would be ignored: key '{t.key('protocol')}' is "
                f"{protocol!r}, which does not use {kind}; set it to {protocols}, or remove those keys"
            )
    security = SecurityConfig(
        protocol=protocol,
        sasl_mechanism=t.choice("sasl_mechanism", SASL_MECHANISMS, None) if "sasl_mechanism" in t.data else None,
        sasl_username_env=t.text("sasl_username_env", None),
        sasl_password_env=t.text("sasl_password_env", None),
        ssl_cafile=file("ssl_cafile"),
        ssl_certfile=file("ssl_certfile"),
        ssl_keyfile=file("ssl_keyfile"),
        ssl_key_password_env=t.text("ssl_key_password_env", None),
        ssl_check_hostname=t.flag("ssl_check_hostname", True),
    )
    if security.sasl:
        if security.sasl_mechanism is None:
            raise t.fail("sasl_mechanism", None, f"one of {list(SASL_MECHANISMS)} with protocol {security.protocol}")
        for key in ("sasl_username_env", "sasl_password_env"):
            if getattr(security, key) is None:
                raise t.fail(key, None, f"the name of the environment variable holding it, with {security.protocol}")
    # A client key or its password without the client certificate would be ignored too.
    for key in ("ssl_keyfile", "ssl_key_password_env"):
        if key in t.data and security.ssl_certfile is None:
            raise t.fail(key, t.data[key], "only with key 'app.security.ssl_certfile', the client certificate")
    t.done()
    return security


def _topics(t: _Table, name: str) -> tuple[str, ...]:
    expected = "a non-empty list of Kafka topic names (letters, digits, '.', '_', '-')"
    value = t.get(name, list, expected)
    if not value or not all(isinstance(v, str) and is_topic(v) for v in value):
        raise t.fail(name, value, expected)
    return tuple(value)


def _topic(t: _Table, name: str, default: Any = ...) -> str:
    value = t.text(name, default)
    if value is not None and not is_topic(value):
        raise t.fail(name, value, "a Kafka topic name: 1 to 249 letters, digits, '.', '_', '-'")
    return value


def _load_model(t: _Table, base: Path) -> ModelSpec:
    chosen = [k for k in ("demo", "exported", "torchscript", "class") if k in t.data]
    if len(chosen) != 1:
        raise ConfigError(
            f"{t.path}: table '{t.prefix}' must set exactly one of 'demo', 'exported', 'torchscript' "
            f"or 'class' (found {chosen or 'none'})"
        )

    def file(name: str) -> Path | None:
        # Relative paths are relative to the config file, wherever the command runs from.
        value = t.text(name, None)
        return None if value is None else (base / value if not Path(value).is_absolute() else Path(value))

    spec = ModelSpec(
        demo=t.text("demo", None),
        exported=file("exported"),
        torchscript=file("torchscript"),
        module_class=t.text("class", None),
        state_dict=file("state_dict"),
        init_args=dict(t.get("init_args", dict, "a table of constructor arguments", {})),
        name=t.text("name", None),
        version=t.text("version", None),
        # TorchScript files are programs: the operator says so here, per model, or they are refused.
        # It also lets a model swap on this pipeline load TorchScript from model_dirs.
        trust_torchscript=t.flag("trust_torchscript", False),
    )
    if spec.module_class and spec.state_dict is None:
        raise ConfigError(f"{t.path}: key '{t.key('state_dict')}' is missing: expected the weights file for the class")
    t.done()
    return spec


def _load_schema(t: _Table, inputs: tuple[ModelInput, ...], state: StateSpec | None, max_payload: int) -> EventSchema:
    fields = decoded_fields(inputs, state.fields if state is not None else ())
    schema = EventSchema(id_field=t.text("id_field", "id"), inputs=fields, max_payload_bytes=max_payload)
    t.done()
    return schema


def _emit_features(t: _Table, state: StateSpec | None) -> bool:
    emit = t.flag("emit_features", False)
    if emit and state is None:
        raise t.fail("emit_features", emit, f"false: there are no per-key features without [{t.prefix}.state]")
    return emit


def default_changelog(state: Mapping[str, Any], group_id: str) -> str:
    """The changelog a stateful pipeline gets unless its config names one. Keyed by an event field,
    it has a name of its own: state kept by record key must never be restored as state by field
    (turning key_field on would count every past event twice; with a fresh changelog the
    pipeline rebuilds its state from the re-keyed history instead)."""
    return f"{group_id}-rekeyed-state-changelog" if "key_field" in state else f"{group_id}-state-changelog"


def _changelog_topic(t: _Table, state: StateSpec | None, group_id: str) -> str:
    if state is None:
        return ""
    state_table = t.table("state")
    topic = state_table.text("changelog_topic", default_changelog(state_table.data, group_id))
    others = [*(t.data.get("input_topics") or [])]
    return _own_topic(t, state_table, "changelog_topic", topic, others, "it holds the state, compacted")


def _own_topic(t: _Table, state_table: _Table, key: str, topic: str, others: list[Any], why: str) -> str:
    """``topic`` if it is none of the pipeline's other topics (``others``, and its output, dead-letter
    and backfill topics) and a valid Kafka topic name (also a folder name: a rocksdb store's)."""
    others = [*others, *(t.data.get(k) for k in ("output_topic", "dead_letter_topic", "backfill_topic"))]
    if topic in others:
        raise state_table.fail(key, topic, f"a topic of its own ({why})")
    if not is_topic(topic):
        raise state_table.fail(key, topic, "a Kafka topic name: letters, digits, '.', '_', '-'")
    return topic


def _rekey(t: _Table, state: StateSpec | None, group_id: str, inputs: tuple[str, ...]) -> RekeyConfig | None:
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


def _check_late_rekeyed(t: _Table, p: PipelineConfig) -> None:
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


def _check_rekeyed_names(path: Path, pipelines: tuple[PipelineConfig, ...]) -> None:
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


def _headers(t: _Table) -> HeaderPolicy:
    expected = "true (carry every input header to the outputs), false, or a list of header names"
    value = t.get("headers", (bool, list), expected, True)
    if isinstance(value, bool):
        return "all" if value else "none"
    if not all(isinstance(v, str) and v for v in value):
        raise t.fail("headers", value, expected)
    return tuple(value)


def _delivery(t: _Table) -> dict[str, Any]:
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


def _transaction_interval(t: _Table) -> float:
    why = "a transaction open past the producer's 60,000 ms transaction timeout is aborted by the broker"
    return t.number("transaction_interval_ms", 100.0, minimum=1, maximum=MAX_TRANSACTION_INTERVAL_MS, why=why)


def _load_pipeline(t: _Table, name: str, base: Path, app_id: str) -> PipelineConfig:
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
    rekey = _rekey(t, state, group_id, input_topics)
    pipeline = PipelineConfig(
        name=name,
        input_topics=input_topics if rekey is None else (rekey.topic,),
        rekey=rekey,
        output_topic=_topic(t, "output_topic"),
        dead_letter_topic=_topic(t, "dead_letter_topic"),
        backfill_topic=_topic(t, "backfill_topic", None) or f"{t.data.get('output_topic', '')}-backfill",
        model=_load_model(t.table("model"), base),
        schema=_load_schema(features, inputs, state, max_payload),
        inputs=inputs,
        state=state,
        changelog_topic=_changelog_topic(t, state, group_id),
        emit_features=_emit_features(t, state),
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
        **_delivery(t),
    )
    dirs = t.get("model_dirs", list, "a list of folders new models may be loaded from", None)
    if dirs is None:
        dirs = default_model_dirs(pipeline.model)
    elif not all(isinstance(d, str) and d.strip() for d in dirs):
        raise t.fail("model_dirs", dirs, "a list of folders new models may be loaded from")
    else:
        dirs = [base / d if not Path(d).is_absolute() else Path(d) for d in dirs]
    _check_late_rekeyed(t, pipeline)
    t.done()
    return replace(pipeline, model_dirs=tuple(dirs))


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


def default_model_dirs(spec: ModelSpec) -> list[Path]:
    """Where a model swap may load from when the config does not say: next to the configured model."""
    configured = spec.exported or spec.torchscript or spec.state_dict
    return [configured.parent] if configured is not None else [WEIGHTS_DIR]


# A record's framing around its key and value, and the producer's own request limit (aiokafka's
# max_request_size default): a key's state record must fit both.
RECORD_OVERHEAD_BYTES = 256
PRODUCER_REQUEST_BYTES = 1024 * 1024


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
