"""Scorers a ``ProcessRunner``'s child process builds: importable by module path, since the
child is a fresh interpreter (spawned) that unpickles its factory."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from streams.errors import ModelLoadError


class RowSums:
    """Scores a batch as each row's sum; row sums of -1 raise, -2 hang, -3 end the process."""

    name = "row-sums"
    version = "3"

    def predict_now(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        sums = inputs[0].reshape(len(inputs[0]), -1).sum(axis=1)
        if (sums == -1).any():
            raise ValueError("a row sums to -1")
        if (sums == -2).any():
            marker = os.environ.get("SLUICE_TEST_HANG_MARKER")
            if marker:
                open(marker, "w").close()  # the test knows the child has the batch
            time.sleep(3600)
        if (sums == -3).any():
            os._exit(7)
        return sums.astype(np.float32)


def row_sums() -> RowSums:
    return RowSums()


def not_loadable() -> RowSums:
    raise ModelLoadError("model broken v1 could not be read: truncated file")


def scheduling_policy() -> RowSums:
    """A scorer whose score is the process's scheduling policy (Linux's ``SCHED_*`` number)."""
    scorer = RowSums()
    scorer.predict_now = lambda inputs: np.full(len(inputs[0]), os.sched_getscheduler(0), dtype=np.float32)  # type: ignore[method-assign]
    return scorer


def priority() -> RowSums:
    """A scorer whose score is the process's nice value (its priority as the child set it)."""
    scorer = RowSums()
    scorer.predict_now = lambda inputs: np.full(len(inputs[0]), os.nice(0), dtype=np.float32)  # type: ignore[method-assign]
    return scorer


class Tally:
    """An aside: counts the events it is told of, and returns the running count; when closed, it
    takes ``linger_s`` (records still in flight) and then writes the count to the file ``report``."""

    def __init__(self, report: str, linger_s: float, name: str, version: str) -> None:
        self.report = report
        self.linger_s = linger_s
        self.label = f"{name} v{version}"
        self.events = 0

    def __call__(self, predictions: np.ndarray, extra: object) -> int:
        self.events += len(predictions)
        return self.events

    def close(self) -> None:
        time.sleep(self.linger_s)
        with open(self.report, "w") as out:
            out.write(f"{self.label}: {self.events}")
