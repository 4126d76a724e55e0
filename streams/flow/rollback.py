"""When a canary is rolled back on its own: the limits its evidence must stay within.

Judged on the canary's batches since it started (a batch that failed whole counts as an error
or a timeout), once there are ``min_batches`` of them, so one unlucky first batch does not
decide. Unset limits are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.flow.model_stats import ModelStats


@dataclass(frozen=True)
class RollbackLimits:
    # Share of the canary's batches that failed with an error.
    max_error_rate: float | None = None
    # Share of the canary's batches that did not answer within the inference timeout.
    max_timeout_rate: float | None = None
    # The 99th percentile of the canary's time per batch on the model's thread.
    max_p99_s: float | None = None
    min_batches: int = 20


def broken_limit(stats: ModelStats, limits: RollbackLimits) -> str | None:
    """Which limit ``stats`` broke, in words for the log, or None while within all of them."""
    attempts = stats.batches + stats.errors + stats.timeouts
    if attempts < limits.min_batches:
        return None
    if limits.max_error_rate is not None and stats.errors / attempts > limits.max_error_rate:
        return (
            f"failed {stats.errors} of {attempts} batches ({stats.errors / attempts:.1%}), over its "
            f"max_error_rate of {limits.max_error_rate:.1%}"
        )
    if limits.max_timeout_rate is not None and stats.timeouts / attempts > limits.max_timeout_rate:
        return (
            f"timed out on {stats.timeouts} of {attempts} batches ({stats.timeouts / attempts:.1%}), over its "
            f"max_timeout_rate of {limits.max_timeout_rate:.1%}"
        )
    p99 = stats.p99_seconds()
    if (
        limits.max_p99_s is not None
        and p99 is not None
        and stats.batches >= limits.min_batches
        and p99 > limits.max_p99_s
    ):
        return (
            f"took up to {p99 * 1000:.1f} ms per batch at the 99th percentile, over its max_p99_ms of "
            f"{limits.max_p99_s * 1000:.1f}"
        )
    return None
