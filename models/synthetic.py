"""Deterministic synthetic card transactions with a planted fraud signal.

One generator serves both training the demo models and producing demo events, so
what the models learn is what the stream carries. The transactions form a stream:
each belongs to an account (the record key) and they come in stream order. Each has:

- ``amount``, ``merchant_risk``, ``foreign``: the scalars an account's history is made of;
- ``features``: 32 per-event features (standardised amount, merchant risk, ...);
- a fraud label drawn from a logistic model of the features and the account's state.

No event carries its account's history: sluice computes it from the account's earlier
events in the stream (``account_histories`` here is the reference for that feature).

The planted signal: now and then an account is taken over, and its next 3-6 events
are a takeover burst, placed close together in the stream (the fraudster is quick):
large transactions at risky merchants, mostly foreign, and likely fraud. The per-event features carry only
a weak echo of it plus some feature interactions. So a model over the account's recent
events (the heavy demo model) can beat one over the features alone (the light one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = 32
HISTORY_STEPS = 16
# Each event's scalar fields: the history's fields per step, in this order, then a mask
# column, 1.0 for a real event, 0.0 for padding (an account with fewer events than HISTORY_STEPS).
SCALAR_FIELDS = ("amount", "merchant_risk", "foreign")
HISTORY_FIELDS = len(SCALAR_FIELDS) + 1
ACCOUNTS = 10_000
# A burst starts at about 1% of events and lasts 4.5 events on average, so about 5% of
# events are in one, as in the generator before it was sequential.
TAKEOVER_START_RATE = 0.011
BURST_EVENTS = (3, 6)
# A burst's next event follows its previous one within this many stream positions.
BURST_MAX_GAP = 20
EMITTED_DECIMALS = 4


@dataclass(frozen=True)
class Transactions:
    """A stretch of the generated stream, column-wise, in stream order."""

    features: np.ndarray  # (n, FEATURES) float32
    amount: np.ndarray  # (n,) float32
    merchant_risk: np.ndarray  # (n,) float32
    foreign: np.ndarray  # (n,) float32, 0.0 or 1.0
    accounts: np.ndarray  # (n,) int64
    takeover: np.ndarray  # (n,) bool: the event is in a takeover burst
    labels: np.ndarray  # (n,) float32, 1.0 = fraud

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def generate(n: int, seed: int) -> Transactions:
    """Generate a stream of ``n`` transactions; the same ``(n, seed)`` always gives the same data."""
    rng = np.random.default_rng(seed)
    accounts = rng.integers(0, ACCOUNTS, size=n)
    starts = rng.random(n) < TAKEOVER_START_RATE
    lengths = rng.integers(BURST_EVENTS[0], BURST_EVENTS[1] + 1, size=n)
    gaps = rng.integers(1, BURST_MAX_GAP + 1, size=(n, BURST_EVENTS[1] - 1))
    accounts = _place_bursts(accounts, starts, lengths, gaps)
    takeover = _in_burst(accounts, starts, lengths)

    # A burst's transactions: large, at risky merchants, mostly foreign. Set so the transformer
    # scores about as well as it did on the generator before (held-out ROC AUC 0.8733).
    amount = rng.standard_normal(n, dtype=np.float32) + 2.0 * takeover
    merchant_risk = rng.standard_normal(n, dtype=np.float32) + 2.0 * takeover
    foreign = (rng.random(n) < np.where(takeover, 0.8, 0.05)).astype(np.float32)
    features = rng.standard_normal((n, FEATURES), dtype=np.float32)
    # The per-event features only echo the takeover weakly.
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
    return Transactions(
        features=features,
        amount=amount.astype(np.float32),
        merchant_risk=merchant_risk.astype(np.float32),
        foreign=foreign,
        accounts=accounts,
        takeover=takeover,
        labels=labels,
    )


def _place_bursts(accounts: np.ndarray, starts: np.ndarray, lengths: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Give each burst's follow-up events to its account, a few positions apart.

    Without this an account's next events would be ~ACCOUNTS events apart, so a burst would
    span demo chunks (each generated on its own) and training streams' ends. A follow-up never
    takes a position where a burst starts, nor one another burst claimed first; a burst that
    loses one simply goes on at its account's next event.
    """
    accounts = accounts.copy()
    origin = np.flatnonzero(starts)
    follow = np.arange(gaps.shape[1])[None, :] < (lengths[origin, None] - 1)
    positions = origin[:, None] + np.cumsum(gaps[origin], axis=1)
    owners = np.broadcast_to(accounts[origin, None], positions.shape)
    keep = follow & (positions < accounts.size)
    positions, owners = positions[keep], owners[keep]
    free = ~starts[positions]
    positions, owners = positions[free], owners[free]
    # First claim wins (the earlier burst), so the result does not hang on numpy's write order.
    claimed, first = np.unique(positions, return_index=True)
    accounts[claimed] = owners[first]
    return accounts


def _account_order(accounts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events grouped by account, stream order kept within each: the grouping ``order``, and
    for each grouped position its rank among its account's events and its group's end."""
    order = np.argsort(accounts, kind="stable")
    grouped = accounts[order]
    new_group = np.r_[True, grouped[1:] != grouped[:-1]]
    group_start = np.flatnonzero(new_group)
    group_end = np.r_[group_start[1:], accounts.size]
    group = np.cumsum(new_group) - 1
    position = np.arange(accounts.size)
    return order, position - group_start[group], group_end[group]


def _in_burst(accounts: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Whether each event is in a takeover burst: a start and its account's next ``length - 1`` events."""
    order, _, group_end = _account_order(accounts)
    grouped_starts, grouped_lengths = starts[order], lengths[order]
    position = np.arange(accounts.size)
    burst = np.zeros(accounts.size, dtype=bool)
    for k in range(BURST_EVENTS[1]):
        src = position[grouped_starts & (grouped_lengths > k) & (position + k < group_end)]
        burst[src + k] = True
    out = np.empty_like(burst)
    out[order] = burst
    return out


def emitted(values: np.ndarray) -> np.ndarray:
    """Values as demo events carry them in JSON: float64 rounded to ``EMITTED_DECIMALS``."""
    return np.asarray(values, dtype=np.float64).round(EMITTED_DECIMALS)


def history_values(data: Transactions) -> np.ndarray:
    """The (n, 3) history fields as sluice reads them back from the events: rounded as emitted,
    then float32, so a model trains on what it will be served."""
    columns = np.stack([getattr(data, field) for field in SCALAR_FIELDS], axis=1)
    return emitted(columns).astype(np.float32)


def account_histories(accounts: np.ndarray, values: np.ndarray, steps: int = HISTORY_STEPS) -> np.ndarray:
    """For each event, its account's last ``steps`` events up to and including itself.

    Shape ``(n, steps, F + 1)`` float32 for ``values`` of shape ``(n, F)``: oldest first and
    right-aligned (the event itself is the last row), zero rows on the left where the account
    has fewer earlier events, and a last column of 1.0 for a real event, 0.0 for padding. This
    is sluice's stream feature ``{ kind = "last", n = steps, include_current = true, mask = true }``.
    """
    values = np.asarray(values, dtype=np.float32)
    n, fields = values.shape
    out = np.zeros((n, steps, fields + 1), dtype=np.float32)
    order, rank, _ = _account_order(np.asarray(accounts))
    position = np.arange(n)
    for back in range(min(steps, n)):
        # Grouped positions with at least `back` earlier events of their account.
        has = position[rank >= back]
        rows = order[has]
        out[rows, steps - 1 - back, :fields] = values[order[has - back]]
        out[rows, steps - 1 - back, fields] = 1.0
    return out


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
