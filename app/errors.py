"""Mistakes an operator can fix (config, broker address, credentials, topics, model files) end a
command with one line saying what to fix and exit status 2, never with a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from app.config import ConfigError
from app.topics import BrokerUnreachableError, TopicMissingError
from models.protocol import ModelLoadError

OPERATOR_ERRORS: tuple[type[Exception], ...] = (ConfigError, BrokerUnreachableError, TopicMissingError, ModelLoadError)


@contextmanager
def exit_on_operator_error(command: str, *more: type[Exception]) -> Iterator[None]:
    try:
        yield
    except (*OPERATOR_ERRORS, *more) as exc:
        print(f"sluice {command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
