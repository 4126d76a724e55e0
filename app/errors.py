"""Mistakes an operator can fix (config, broker address, credentials, topics, model files) end a
command with one line saying what to fix and exit status 2, never with a traceback.

Each command adds its own (``BackfillError``, ``WatchError``, ``CheckpointError``,
``FileSinkError``, ``TopicNotFoundError``) to the ones every command shares below.

Raise them before the command starts a Kafka consumer where possible. And stop consumers with
``streams.replay.stop_consumer``: aiokafka's ``CancelledError`` from stopping a consumer that
had just started once replaced such an error in a ``finally``, and Faust ends a cancelled
command with status 0 and nothing said.
"""

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
        print(f"sluice {command}: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        raise SystemExit(2) from None
