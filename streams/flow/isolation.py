"""When the model raises on a batch: find the events that cause it, or tell that the model itself is down.

A batch that fails is one of two things, and they need opposite handling:

- a few poisonous inputs (an edge case the model's code does not handle): score the rest
  and dead-letter only those, found by bisection in O(k log n) model calls for k culprits;
- the model failing on everything (broken weights, device lost, out of memory for any
  size): dead-lettering would throw the whole stream away, so the caller must stop, retry
  and commit nothing past the batch.

One model call tells them apart before any bisection: the *canary*, a single input the
model scored successfully before (zeros until there is one). If the canary fails too, the
model is down; if it passes, the batch's own inputs are at fault. A runner that knows a
failure is transient says so with a retriable ``ModelError``: no canary, no bisection, the
error goes to the caller, which retries the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.protocol import Runner
from streams.codecs.codec import Decoded, Reject
from streams.errors import ModelError, ModelUnavailableError

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class Failure:
    row: int
    message: str


@dataclass(frozen=True)
class Isolated:
    """Predictions for rows ``kept`` (in order), and why each other row failed."""

    kept: np.ndarray
    predictions: np.ndarray
    failures: list[Failure]


def describe(exc: BaseException) -> str:
    text = f"the model raised {type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


class IsolatingScorer:
    """Calls the runner on whole batches and isolates failures when a batch raises."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._canary: list[np.ndarray] | None = None

    async def predict(self, inputs: Sequence[np.ndarray]) -> Isolated:
        rows = int(inputs[0].shape[0])
        try:
            predictions = await self.runner.predict(inputs)
        except Exception as exc:  # any failure of user model code is isolated below
            if isinstance(exc, ModelError) and exc.retriable:
                raise  # the runner says trying again may work: not the inputs' fault, never dead letters
            await self._check_model(inputs, exc)
            return await self._bisect(inputs, rows)
        self._canary = [x[:1].copy() for x in inputs]
        return Isolated(np.arange(rows), predictions, [])

    async def _check_model(self, inputs: Sequence[np.ndarray], batch_error: Exception) -> None:
        canary = self._canary or [np.zeros((1, *x.shape[1:]), dtype=x.dtype) for x in inputs]
        try:
            await self.runner.predict(canary)
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailableError(
                f"model {self.runner.name} v{self.runner.version} fails on an input it scored before "
                f"({describe(exc)}; on the batch: {describe(batch_error)})"
            ) from batch_error

    async def _bisect(self, inputs: Sequence[np.ndarray], rows: int) -> Isolated:
        kept: list[np.ndarray] = []
        predictions: list[np.ndarray] = []
        failures: list[Failure] = []
        # Depth-first over halves, left before right, so predictions stay in row order.
        stack = [np.arange(rows)]
        while stack:
            part = stack.pop()
            try:
                result = await self.runner.predict([x[part] for x in inputs])
            except Exception as exc:  # noqa: BLE001
                if len(part) == 1:
                    failures.append(Failure(int(part[0]), describe(exc)))
                    continue
                middle = len(part) // 2
                stack += [part[middle:], part[:middle]]
                continue
            kept.append(part)
            predictions.append(result)
        log.warning(
            "model %s raised on %d of %d events of a batch; scored the rest, dead-lettering those",
            self.runner.name,
            len(failures),
            rows,
        )
        if not kept:
            return Isolated(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), failures)
        return Isolated(np.concatenate(kept), np.concatenate(predictions), failures)


def non_finite_rows(predictions: np.ndarray) -> np.ndarray:
    """Indices of the rows holding NaN or infinity anywhere."""
    if predictions.size == 0 or np.isfinite(predictions).all():
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(~np.isfinite(predictions.reshape(len(predictions), -1)).all(axis=1))


def without_failed_rows(decoded: Decoded, kept: np.ndarray, failures: Sequence[Failure]) -> Decoded:
    """``decoded`` narrowed to the rows the model scored, the others rejected as ``ModelError``."""
    return decoded.narrowed(kept, [Reject(int(decoded.rows[f.row]), "ModelError", f.message) for f in failures])
