"""``[app.security]``: how sluice reaches a secured cluster (TLS, SASL, or both).

Secrets are never in the file, only the names of the environment variables that hold them.
A key the chosen protocol would not use is refused rather than ignored: a user who set a
SASL password or a CA file believes the connection is authenticated or encrypted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.config.table import Table
from streams.errors import ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


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


def load_security(t: Table, base: Path) -> SecurityConfig:
    """The ``[app.security]`` table ``t``; relative file paths are relative to ``base``, the config's folder."""

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
        ssl_cafile=t.file("ssl_cafile", base),
        ssl_certfile=t.file("ssl_certfile", base),
        ssl_keyfile=t.file("ssl_keyfile", base),
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
