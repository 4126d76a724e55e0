"""A TOML table that remembers where it is in its file, so every config error names the key.

Every number has its range, given where the key is read: TOML integers have no bound in
Python's ``tomllib``, and ``inf`` and ``nan`` are floats, so a value the loader let through
would fail later, far from the file (a port Faust refuses, a partition count the broker
refuses, a thread count torch cannot hold). No string holds control characters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streams.errors import ConfigError

# C0 and C1 control characters (NUL, newlines, escapes...): no name, path or label holds one.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(number: float) -> str:
    """A bound as an error shows it: 65,535, 0.1, 3,600,000."""
    return f"{int(number):,}" if float(number).is_integer() else f"{number:,}"


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
        if value is not None and CONTROL.search(value):
            raise self.fail(name, value, "a string without control characters")
        return value

    def integer(self, name: str, default: Any = ..., *, minimum: int = 0, maximum: int, why: str = "") -> int:
        """An integer from ``minimum`` to ``maximum``; ``why`` says where the maximum comes from."""
        expected = f"an integer from {minimum:,} to {maximum:,}" + (f" ({why})" if why else "")
        value = self.get(name, int, expected, default)
        if not minimum <= value <= maximum:
            raise self.fail(name, value, expected)
        return value

    def number(
        self, name: str, default: Any = ..., *, minimum: float, maximum: float, above: bool = False, why: str = ""
    ) -> float:
        """A number from ``minimum`` (``above``: greater than it) to ``maximum``, which may be
        ``math.inf`` for a key where infinity means something (no deadline, no limit)."""
        low = f"> {shown(minimum)}" if above else f">= {shown(minimum)}"
        expected = f"a number {low}" if maximum == math.inf else f"a number from {shown(minimum)} to {shown(maximum)}"
        if maximum != math.inf and above:
            expected = f"a number {low} and at most {shown(maximum)}"
        expected += f" ({why})" if why else ""
        value = self.get(name, (int, float), expected, default)
        # Comparisons refuse NaN; an integer too large for a float is refused, not an OverflowError.
        if not (minimum < value if above else minimum <= value) or not value <= maximum:
            raise self.fail(name, value, expected)
        try:
            return float(value)
        except OverflowError:
            raise self.fail(name, value, expected) from None

    def flag(self, name: str, default: Any = ...) -> bool:
        return self.get(name, bool, "true or false", default)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(name, str, f"one of {list(choices)}", default)
        if value not in choices:
            raise self.fail(name, value, f"one of {list(choices)}")
        return value

    def file(self, name: str, base: Path) -> Path | None:
        """An existing file the key names (relative to ``base``, the config's folder), or None if unset."""
        value = self.text(name, None)
        if value is None:
            return None
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise self.fail(name, value, f"an existing file (looked at {path})")
        return path

    def table(self, name: str, default: Any = ...) -> Table:
        value = self.get(name, dict, "a table", {} if default is not ... else ...)
        return Table(self.path, self.key(name), value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(
                f"{self.path}: unknown key '{self.key(unknown[0])}'; known keys here: {sorted(self.seen)}"
            )
