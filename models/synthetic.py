"""Deterministic synthetic card transactions with a planted fraud signal.

One generator serves both training the demo models and producing demo events, so
what the models learn is what the stream carries. Each transaction has:

- ``features``: 32 per-event features (standardised amount, merchant risk, ...);
- ``history``: the account's last ``HISTORY_STEPS`` transactions, 4 values each
  (amount, time since previous, merchant risk, foreign flag), oldest first;
- a fraud label drawn from a logistic model of both.

The planted signal: an account takeover shows as a burst of large, rapid
transactions at the end of the history; the per-event features carry only a weak
echo of it plus some feature interactions. So a model over the history (the heavy
demo model) can beat one over the features alone (the light one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = 32
HISTORY_STEPS = 16
HISTORY_FIELDS = 4
ACCOUNTS = 10_000
TAKEOVER_RATE = 0.05


@dataclass(frozen=True)
class Transactions:
    """A block of generated transactions, column-wise."""

    features: np.ndarray  # (n, FEATURES) float32
    history: np.ndarray  # (n, HISTORY_STEPS, HISTORY_FIELDS) float32
    labels: np.ndarray  # (n,) float32, 1.0 = fraud
    accounts: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def generate(n: int, seed: int) -> Transactions:
    """Generate ``n`` transactions; the same ``(n, seed)`` always gives the same data."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, FEATURES), dtype=np.float32)
    history = rng.standard_normal((n, HISTORY_STEPS, HISTORY_FIELDS), dtype=np.float32)
    takeover = rng.random(n) < TAKEOVER_RATE

    # A takeover: the last 3-6 transactions are large, rapid and often foreign.
    burst_len = rng.integers(3, 7, size=n)
    step = np.arange(HISTORY_STEPS)[None, :]
    in_burst = takeover[:, None] & (step >= HISTORY_STEPS - burst_len[:, None])
    history[:, :, 0] += 2.0 * in_burst
    history[:, :, 1] -= 1.5 * in_burst
    history[:, :, 3] += 1.0 * in_burst
    # The per-event features only echo it weakly.
    features[:, 6] += 0.6 * takeover

    x = features
    logit = (
        -3.8
        + 1.1 * x[:, 0]
        - 0.8 * x[:, 1]
        + 0.7 * x[:, 2] * x[:, 3]
        + 0.9 * np.tanh(x[:, 4] + x[:, 5])
        + 4.0 * takeover
    )
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    accounts = rng.integers(0, ACCOUNTS, size=n)
    return Transactions(features=features, history=history, labels=labels, accounts=accounts)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted as half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs both classes in the labels")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties so equal scores count as half a win.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))
