"""Every Kafka client sluice makes, built in one place so TLS and SASL settings apply to all.

Secrets come from the environment variables the config names, read when a client is
made; they are never logged, and a variable that is not set is an error naming it.

The one module of ``app`` that imports the Kafka client: the rest of the app hands the clients
made here to the engine's adapters (``streams.kafka``), and names their type as ``Consumer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError

from app.config import Config, SecurityConfig
from streams.errors import ConfigError

Connection = Mapping[str, Any]
Consumer: TypeAlias = AIOKafkaConsumer

# Settings a connection carries for producers only (so every producer made from it gets them);
# consumers and admin clients would refuse them.
_PRODUCER_ONLY = frozenset({"compression_type"})

# What each TLS context trusts and presents, for describe(): an SSLContext cannot say it itself.
_tls_identity: weakref.WeakKeyDictionary[ssl.SSLContext, str] = weakref.WeakKeyDictionary()


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
        settings["ssl_context"] = _tls_context(config, security, env)
    if config.app.compression != "none":
        settings["compression_type"] = config.app.compression
    return settings


def _tls_context(config: Config, security: SecurityConfig, env: Mapping[str, str]) -> ssl.SSLContext:
    """What aiokafka's create_ssl_context makes, loaded step by step so that a file that cannot be
    used is a config error naming its key, not an ssl.SSLError at the first connection."""
    where = f"{config.path}: key 'app.security"
    try:
        # The CA file alone when one is given, else the system's CAs.
        context = ssl.create_default_context(cafile=security.ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        what = f"not a PEM file of CA certificates ({exc})"
        raise ConfigError(f"{where}.ssl_cafile' ({security.ssl_cafile}): {what}") from None
    context.check_hostname = security.ssl_check_hostname
    identity = f"CA {security.ssl_cafile}" if security.ssl_cafile else "the system's CAs"
    if security.ssl_certfile is not None:
        password = _secret(config, "ssl_key_password_env", security.ssl_key_password_env, env)
        asked: list[bool] = []

        def key_password() -> str:
            # Called only for an encrypted key; without it OpenSSL would prompt on the terminal.
            asked.append(True)
            return password or ""

        try:
            context.load_cert_chain(security.ssl_certfile, security.ssl_keyfile, key_password)
        except (ssl.SSLError, OSError) as exc:
            files = f"{security.ssl_certfile}" + (f", key {security.ssl_keyfile}" if security.ssl_keyfile else "")
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
                why = "the private key does not belong to the certificate"
            elif asked and password is None:
                why = "the private key is encrypted: set key 'app.security.ssl_key_password_env'"
            elif asked:
                why = f"the password in ${security.ssl_key_password_env} does not decrypt the private key"
            else:
                why = f"expected a PEM certificate and its private key ({exc})"
            raise ConfigError(f"{where}.ssl_certfile' ({files}): {why}") from None
        identity += f", client certificate {security.ssl_certfile}"
    else:
        identity += ", no client certificate"
    _tls_identity[context] = identity
    return context


def describe(conn: Connection) -> str:
    """Where and how a client connects, for messages: never the secrets."""
    text = f"{conn['bootstrap_servers']} ({conn.get('security_protocol', 'PLAINTEXT')}"
    if conn.get("sasl_mechanism"):
        text += f", {conn['sasl_mechanism']} as user {conn.get('sasl_plain_username')!r}"
    if conn.get("ssl_context") in _tls_identity:
        text += f", {_tls_identity[conn['ssl_context']]}"
    return text + ")"


def make_producer(conn: Connection, **settings: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica: outputs are never lost
    or duplicated by a retry, and per-partition order holds. Batches are compressed as
    ``[app] compression`` says (the connection carries it)."""
    return AIOKafkaProducer(**{"acks": "all", "enable_idempotence": True, **conn, **settings})


def make_consumer(conn: Connection, **settings: Any) -> Consumer:
    return AIOKafkaConsumer(**_without_producer_settings(conn), **{"enable_auto_commit": False, **settings})


def make_admin(conn: Connection, **settings: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**_without_producer_settings(conn), **settings)


def _without_producer_settings(conn: Connection) -> dict[str, Any]:
    return {key: value for key, value in conn.items() if key not in _PRODUCER_ONLY}


async def why_unreachable(conn: Connection, timeout_s: float) -> str:
    """The broker's own reason when a secured connection fails (aiokafka's bootstrap only says
    it could not connect): wrong credentials, a TLS error, or nothing listening."""
    host, _, port = str(conn["bootstrap_servers"]).split(",")[0].rpartition(":")
    try:
        connection = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                security_protocol=conn.get("security_protocol", "PLAINTEXT"),
                ssl_context=conn.get("ssl_context"),
                sasl_mechanism=conn.get("sasl_mechanism"),
                sasl_plain_username=conn.get("sasl_plain_username"),
                sasl_plain_password=conn.get("sasl_plain_password"),
                request_timeout_ms=int(timeout_s * 1000),
            ),
            timeout_s,
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    connection.close()
    return "it answered a direct connection, but not a metadata request"


class _UnreadConnectionErrors(logging.Filter):
    """Drops asyncio's report of a connection error that nobody read.

    asyncio reports a future whose exception was never read, traceback and all, when the future
    is collected, which may be as the process exits. The Kafka client leaves one behind when a
    TLS broker refuses the connection after the handshake (a mutual-TLS listener's "bad
    certificate" alert arrives on the first read): the start-up check has already said why in
    one line, and the traceback would break that one line, at a time no caller can scope."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        unread = record.getMessage().startswith("Future exception was never retrieved")
        return not (unread and isinstance(error, ssl.SSLError | ConnectionError | KafkaConnectionError))


def hush_unread_connection_errors() -> None:
    """Install ``_UnreadConnectionErrors`` on asyncio's logger (once per process)."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnreadConnectionErrors) for f in logger.filters):
        logger.addFilter(_UnreadConnectionErrors())


@contextlib.contextmanager
def quiet_client_logs() -> Iterator[None]:
    """The Kafka client's log silenced for a while: aiokafka logs each failed connection attempt at
    ERROR, where the caller raises one line that says it all."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
