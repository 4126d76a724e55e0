"""A TOML table that remembers where it is in its file, so every config error names the key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streams.errors import ConfigError


class Table:
    """A TOML table that remembers where it is, so every error can name the key."""

    def __init__(self, path: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(f"{self.path}: key '{self.key(name)}' has value {value!r}: expected {expected}")

    def get(self, name: str, kind: type | tuple[type, ...], expected: str, default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is ...:
                raise ConfigError(f"{self.path}: key '{self.key(name)}' is missing: expected {expected}")
            return default
        value = self.data[name]
        # bool is an int in Python; a config that says `true` where a number belongs is a mistake.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(name, value, expected)
        if not isinstance(value, kind):
            raise self.fail(name, value, expected)
        return value

    def text(self, name: str, default: Any = ...) -> str:
        value = self.get(name, str, "a non-empty string", default)
        if value is not None and not value.strip():
            raise self.fail(name, value, "a non-empty string")
        return value

    def integer(self, name: str, default: Any = ..., minimum: int = 0) -> int:
        value = self.get(name, int, f"an integer >= {minimum}", default)
        if value < minimum:
            raise self.fail(name, value, f"an integer >= {minimum}")
        return value

    def number(self, name: str, default: Any = ..., *, positive: bool = True) -> float:
        expected = "a number > 0" if positive else "a number >= 0"
        value = self.get(name, (int, float), expected, default)
        if value < 0 or (positive and value == 0) or value != value:
            raise self.fail(name, value, expected)
        return float(value)

    def flag(self, name: str, default: Any = ...) -> bool:
        return self.get(name, bool, "true or false", default)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(name, str, f"one of {list(choices)}", default)
        if value not in choices:
            raise self.fail(name, value, f"one of {list(choices)}")
        return value

    def table(self, name: str, default: Any = ...) -> Table:
        value = self.get(name, dict, "a table", {} if default is not ... else ...)
        return Table(self.path, self.key(name), value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown key '{self.key(unknown[0])}'; known keys here: {sorted(self.seen)}"
            )
