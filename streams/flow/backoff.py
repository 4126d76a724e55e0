"""Waiting for the model or the broker to come back: first retry soon, then no more often than
``MAX_RETRY_S``, so a long outage neither floods the log nor hammers a struggling device."""

from __future__ import annotations

from collections.abc import Iterator

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0


def retry_delays() -> Iterator[float]:
    """Seconds to wait before each retry: doubling from ``FIRST_RETRY_S`` up to ``MAX_RETRY_S``."""
    delay = FIRST_RETRY_S
    while True:
        yield delay
        delay = min(MAX_RETRY_S, delay * 2)
