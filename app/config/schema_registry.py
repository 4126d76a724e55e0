"""``[app.schema_registry]``: where the schemas of Avro, Protobuf and JSON Schema events are kept.

Named once for the app; a pipeline with ``format = "avro"`` (or ``"protobuf"``, ``"json_schema"``)
needs it. Like ``[app.security]``, secrets are never in the file: only the names of the environment
variables that hold them, read when the client is made. ``mock://NAME`` is confluent-kafka's
in-memory registry, for tests and trials in one process (nothing is kept, no other process sees it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.config.table import Table
from streams.errors import ConfigError

SCHEMES = ("http://", "https://", "mock://")
# How long one request to the registry may take before it counts as the registry being away.
DEFAULT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class SchemaRegistryConfig:
    url: str
    username_env: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    @property
    def in_memory(self) -> bool:
        return self.url.startswith("mock://")


def load_schema_registry(t: Table, base: Path) -> SchemaRegistryConfig:
    """The ``[app.schema_registry]`` table ``t``; relative file paths are relative to ``base``."""

    url = t.text("url")
    if not url.startswith(SCHEMES) or len(url) <= len("mock://") or any(c.isspace() for c in url):
        raise t.fail("url", url, "a registry's address: http://HOST:PORT, https://HOST:PORT or mock://NAME")
    registry = SchemaRegistryConfig(
        url=url.rstrip("/"),
        username_env=t.text("username_env", None),
        password_env=t.text("password_env", None),
        token_env=t.text("token_env", None),
        ca_file=t.file("ca_file", base),
        cert_file=t.file("cert_file", base),
        key_file=t.file("key_file", base),
        timeout_ms=t.integer("timeout_ms", DEFAULT_TIMEOUT_MS, minimum=1, maximum=600_000),
    )
    t.done()
    if (registry.username_env is None) != (registry.password_env is None):
        raise ConfigError(
            f"{t.path}: set both '{t.key('username_env')}' and '{t.key('password_env')}' (basic auth), or neither"
        )
    if registry.token_env is not None and registry.username_env is not None:
        raise ConfigError(
            f"{t.path}: '{t.key('token_env')}' (a bearer token) and '{t.key('username_env')}' (basic auth) "
            "exclude each other: keep one"
        )
    if (registry.ca_file or registry.cert_file or registry.key_file) and not url.startswith("https://"):
        raise ConfigError(
            f"{t.path}: key(s) for TLS would be ignored: '{t.key('url')}' is {url!r}; use an https:// address"
        )
    if (registry.cert_file is None) != (registry.key_file is None):
        raise ConfigError(f"{t.path}: set both '{t.key('cert_file')}' and '{t.key('key_file')}' (a client certificate)")
    return registry
