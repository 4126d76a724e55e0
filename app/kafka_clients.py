"""Every Kafka client sluice makes, built in one place so TLS and SASL settings apply to all.

Secrets come from the environment variables the config names, read when a client is
made; they are never logged, and a variable that is not set is an error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from app.config import Config, ConfigError, SecurityConfig

Connection = Mapping[str, Any]


def _secret(config: Config, key: str, variable: str | None, environ: Mapping[str, str]) -> str | None:
    if variable is None:
        return None
    value = environ.get(variable)
    if not value:
        raise ConfigError(
            f"{config.path}: key 'app.security.{key}' names the environment variable ${variable}, which is not set"
        )
    return value


def connection(config: Config, environ: Mapping[str, str] | None = None) -> Connection:
    """The keyword arguments that point an aiokafka client at the configured cluster."""
    env = os.environ if environ is None else environ
    security: SecurityConfig = config.app.security
    settings: dict[str, Any] = {"bootstrap_servers": config.bootstrap_servers, "security_protocol": security.protocol}
    if security.sasl:
        settings["sasl_mechanism"] = security.sasl_mechanism
        # aiokafka takes these for SCRAM as well as PLAIN.
        settings["sasl_plain_username"] = _secret(config, "sasl_username_env", security.sasl_username_env, env)
        settings["sasl_plain_password"] = _secret(config, "sasl_password_env", security.sasl_password_env, env)
    if security.tls:
        context = create_ssl_context(
            cafile=str(security.ssl_cafile) if security.ssl_cafile else None,
            certfile=str(security.ssl_certfile) if security.ssl_certfile else None,
            keyfile=str(security.ssl_keyfile) if security.ssl_keyfile else None,
            password=_secret(config, "ssl_key_password_env", security.ssl_key_password_env, env),
        )
        context.check_hostname = security.ssl_check_hostname
        settings["ssl_context"] = context
    return settings


def describe(conn: Connection) -> str:
    """Where and how a client connects, for messages: never the secrets."""
    text = f"{conn['bootstrap_servers']} ({conn.get('security_protocol', 'PLAINTEXT')}"
    if conn.get("sasl_mechanism"):
        text += f", {conn['sasl_mechanism']} as user {conn.get('sasl_plain_username')!r}"
    return text + ")"


def make_producer(conn: Connection, **settings: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica: outputs are never lost
    or duplicated by a retry, and per-partition order holds."""
    return AIOKafkaProducer(**conn, **{"acks": "all", "enable_idempotence": True, **settings})


def make_consumer(conn: Connection, **settings: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(**conn, **{"enable_auto_commit": False, **settings})


def make_admin(conn: Connection, **settings: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**conn, **settings)
