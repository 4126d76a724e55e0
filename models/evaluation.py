"""How well models' scores match labels, and how much the models agree: what a new model is judged
on before it serves (`sluice backfill --models ... --labels ...`).

Pure numpy, so the numbers can be checked against an independent computation (the tests do) and
the module runs wherever the models' scores do. Definitions follow scikit-learn's where it has one:
ROC AUC is the Mann-Whitney statistic (a tie between a positive and a negative counts one half),
PR AUC is average precision (the step-wise sum over distinct thresholds, not a trapezoid, which
overstates it), log loss clips scores to [1e-7, 1 - 1e-7].

An event counts only with a label and a score from every model: comparing models on different
events would compare the events. A missing label or score is NaN in the arrays given; the
evaluation says how many events were left out for each reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 20  # over [0, 1]
CALIBRATION_BINS = 10  # equal-count bins by score: deciles
LOG_LOSS_EPS = 1e-7
ROC_POINTS = 200  # at most this many points of each ROC curve are kept (enough to draw it)


@dataclass(frozen=True)
class CalibrationBin:
    """Events of one equal-count bin by score: does their mean score match their share of positives?"""

    count: int
    mean_score: float
    positive_rate: float
    score_min: float
    score_max: float


@dataclass(frozen=True)
class Distribution:
    """Scores' ``quantiles`` at ``QUANTILES``; ``histogram``: counts in equal bins over [0, 1]."""

    mean: float
    quantiles: tuple[float, ...]
    histogram: tuple[int, ...]


@dataclass(frozen=True)
class ModelResult:
    """One model on the counted events. ``roc_auc`` is None when the labels hold one class only and
    ``pr_auc`` when they hold no positive (neither is defined then); ``note`` says so."""

    model: str
    count: int
    positives: int
    roc_auc: float | None
    pr_auc: float | None
    log_loss: float
    calibration: tuple[CalibrationBin, ...]
    distribution: Distribution
    roc_curve: tuple[tuple[float, float], ...]  # (false positive rate, true positive rate), thinned
    note: str | None = None


@dataclass(frozen=True)
class Agreement:
    """A model against the champion on the same events: how far their scores are apart, and how
    often they decide differently (one's score >= ``threshold``, the other's not)."""

    model: str
    champion: str
    count: int
    mean_abs_diff: float
    flips: int
    flip_share: float


@dataclass(frozen=True)
class Evaluation:
    """Every model's result (the first is the champion), each other model's agreement with it, and
    the events: ``events`` given, ``counted``, ``unlabelled`` (no label) and ``unscored`` (a label,
    but no score from at least one model; ``unscored_by_model`` says whose)."""

    models: tuple[ModelResult, ...]
    agreement: tuple[Agreement, ...]
    threshold: float
    events: int
    counted: int
    unlabelled: int
    unscored: int
    unscored_by_model: tuple[tuple[str, int], ...]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """The probability that a random positive scores above a random negative (ties: one half),
    from the positives' average ranks; None with one class only."""
    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, equal values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse.ravel()]


def _by_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when the threshold is set at each distinct score, highest first:
    equal scores are one threshold, so ties never depend on the order of the events."""
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    tps = np.cumsum(labels[order])[last_of_each]
    fps = last_of_each + 1 - tps
    return tps, fps


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Sum over thresholds of (recall gained) x (precision there); None without positives."""
    tps, fps = _by_threshold(labels, scores)
    if len(tps) == 0 or tps[-1] == 0:
        return None
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = ROC_POINTS) -> tuple[tuple[float, float], ...]:
    """(FPR, TPR) from (0, 0) to (1, 1) at distinct thresholds, thinned to about ``points``."""
    tps, fps = _by_threshold(labels, scores)
    if len(tps) == 0 or tps[-1] == 0 or fps[-1] == 0:
        return ()
    fpr, tpr = np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return tuple(zip(fpr[keep].tolist(), tpr[keep].tolist(), strict=True))


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    p = np.clip(scores, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> tuple[CalibrationBin, ...]:
    """``bins`` bins of (nearly) equal count by score; equal scores may straddle two bins, so each
    bin's size is fixed by the count alone. Fewer events than bins: one bin per event."""
    order = np.argsort(scores, kind="mergesort")
    return tuple(
        CalibrationBin(
            count=len(part),
            mean_score=float(scores[part].mean()),
            positive_rate=float(labels[part].mean()),
            score_min=float(scores[part].min()),
            score_max=float(scores[part].max()),
        )
        for part in np.array_split(order, bins)
        if len(part)
    )


def distribution(scores: np.ndarray) -> Distribution:
    counts, _ = np.histogram(scores, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return Distribution(
        mean=float(scores.mean()),
        quantiles=tuple(float(q) for q in np.quantile(scores, QUANTILES)),
        histogram=tuple(int(c) for c in counts),
    )


def agreement(
    model: str, champion: str, scores: np.ndarray, champion_scores: np.ndarray, threshold: float
) -> Agreement:
    n = len(scores)
    flips = int(np.count_nonzero((scores >= threshold) != (champion_scores >= threshold)))
    distance = float(np.mean(np.abs(scores - champion_scores))) if n else 0.0
    return Agreement(model, champion, n, distance, flips, flips / n if n else 0.0)


def evaluate_model(model: str, labels: np.ndarray, scores: np.ndarray) -> ModelResult:
    positives = int(np.count_nonzero(labels == 1))
    auc, ap = roc_auc(labels, scores), average_precision(labels, scores)
    one_class = "positive" if positives else "negative (PR AUC needs a positive too)"
    return ModelResult(
        model=model,
        count=len(labels),
        positives=positives,
        roc_auc=auc,
        pr_auc=ap,
        log_loss=log_loss(labels, scores),
        calibration=calibration(labels, scores),
        distribution=distribution(scores),
        roc_curve=roc_curve(labels, scores),
        note=None if auc is not None else f"ROC AUC needs both classes: every counted event is {one_class}",
    )


def evaluate(labels: np.ndarray, scores: Mapping[str, np.ndarray], threshold: float = 0.5) -> Evaluation:
    """Each model of ``scores`` (name -> one score per event, the champion first) against ``labels``
    (0 or 1 per event), on the events with a label and a score from every model (NaN: missing).
    Raises ValueError for arrays of other lengths, labels other than 0/1, scores outside [0, 1],
    or no event left to count."""
    if not scores:
        raise ValueError("no model to evaluate: give at least one model's scores")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold}: expected a probability in [0, 1]")
    y = np.asarray(labels, dtype=np.float64).ravel()
    columns = {name: np.asarray(s, dtype=np.float64).ravel() for name, s in scores.items()}
    for name, s in columns.items():
        if len(s) != len(y):
            raise ValueError(f"model {name!r}: {len(s)} scores for {len(y)} labels; give one per event (NaN: none)")
        outside = int(np.count_nonzero(~np.isnan(s) & ~((s >= 0) & (s <= 1))))
        if outside:
            raise ValueError(f"model {name!r}: {outside} scores are not probabilities in [0, 1]")
    labelled = ~np.isnan(y)
    if not np.isin(y[labelled], (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1 (NaN: no label)")
    unscored_by_model = tuple((name, int(np.count_nonzero(labelled & np.isnan(s)))) for name, s in columns.items())
    counted = labelled & np.logical_and.reduce([~np.isnan(s) for s in columns.values()])
    n = int(counted.sum())
    if n == 0:
        raise ValueError(
            f"no event to count among {len(y)}: {int((~labelled).sum())} have no label, and of the others "
            + ", ".join(f"{missing} have no score from {name!r}" for name, missing in unscored_by_model)
        )
    y = y[counted]
    kept = {name: s[counted] for name, s in columns.items()}
    champion, champion_scores = next(iter(kept.items()))
    return Evaluation(
        models=tuple(evaluate_model(name, y, s) for name, s in kept.items()),
        agreement=tuple(agreement(name, champion, s, champion_scores, threshold) for name, s in list(kept.items())[1:]),
        threshold=threshold,
        events=len(labelled),
        counted=n,
        unlabelled=int((~labelled).sum()),
        unscored=int((labelled & ~counted).sum()),
        unscored_by_model=unscored_by_model,
    )
