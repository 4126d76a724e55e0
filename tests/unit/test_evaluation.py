"""The evaluation's numbers against independent computations: each metric by its definition, the
slow way, on random data with many ties (scores rounded to one decimal)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from models.evaluation import (
    CALIBRATION_BINS,
    HISTOGRAM_BINS,
    QUANTILES,
    average_precision,
    calibration,
    evaluate,
    log_loss,
    roc_auc,
)


def random_case(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.float64)
    # Informative but noisy, and rounded so that many scores tie, across classes too.
    scores = np.clip(0.3 * labels + rng.random(n) * 0.7, 0, 1).round(1)
    return labels, scores


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """The mean, over positives, of the precision among events scoring at least as high as it
    (scikit-learn's sum of recall steps times precision, with equal scores one threshold)."""
    precisions = []
    for s, y in zip(scores, labels, strict=True):
        if y == 1:
            above = scores >= s
            precisions.append(labels[above].sum() / above.sum())
    return float(np.mean(precisions))


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_is_the_share_of_positive_negative_pairs_ordered_right_ties_counting_half(seed):
    labels, scores = random_case(seed)
    assert len(np.unique(scores)) < 15, "the case has ties"
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_is_the_mean_precision_at_each_positive(seed):
    labels, scores = random_case(seed)
    assert average_precision(labels, scores) == pytest.approx(brute_average_precision(labels, scores), abs=1e-12)


def test_the_metrics_match_scikit_learns_documented_example():
    # average_precision_score and roc_auc_score's docstring examples.
    labels, scores = np.array([0.0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert average_precision(labels, scores) == pytest.approx(0.8333333333)
    assert roc_auc(labels, scores) == pytest.approx(0.75)


def test_all_tied_scores_are_one_threshold_whatever_the_order():
    labels = np.array([1.0, 0, 0, 1, 0])
    scores = np.full(5, 0.5)
    assert roc_auc(labels, scores) == 0.5
    assert average_precision(labels, scores) == pytest.approx(0.4)  # the base rate, not order-dependent
    assert average_precision(labels[::-1], scores) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(3))
def test_log_loss_is_the_mean_negative_log_likelihood_with_scores_clipped(seed):
    labels, scores = random_case(seed)
    scores[:3] = [0.0, 1.0, 0.0]  # clipped to 1e-7 and 1 - 1e-7, never log(0)
    expected = 0.0
    for y, s in zip(labels, scores, strict=True):
        p = min(max(s, 1e-7), 1 - 1e-7)
        expected -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert log_loss(labels, scores) == pytest.approx(expected / len(labels), rel=1e-12)
    assert math.isfinite(log_loss(np.array([1.0, 0.0]), np.array([0.0, 1.0])))


@pytest.mark.parametrize("n", [0, 3, 10, 57, 300])
def test_calibration_bins_hold_every_event_in_nearly_equal_counts_by_score(n):
    labels, scores = random_case(7, n)
    bins = calibration(labels, scores)
    assert sum(b.count for b in bins) == n
    assert len(bins) == min(n, CALIBRATION_BINS)
    assert max((b.count for b in bins), default=0) - min((b.count for b in bins), default=0) <= 1
    for low, high in itertools.pairwise(bins):
        assert low.score_max <= high.score_min and low.mean_score <= high.mean_score
    # The bins' positives add up to all the positives.
    assert sum(b.positive_rate * b.count for b in bins) == pytest.approx(labels.sum())


def test_agreement_counts_mean_distance_and_flipped_decisions_at_the_threshold():
    labels = np.array([0.0, 1, 0, 1])
    champion = np.array([0.2, 0.6, 0.5, 0.9])
    challenger = np.array([0.3, 0.4, 0.5, 0.95])
    evaluation = evaluate(labels, {"mlp v1": champion, "transformer v2": challenger, "same": champion})
    first, same = evaluation.agreement
    assert (first.model, first.champion, first.count) == ("transformer v2", "mlp v1", 4)
    assert first.mean_abs_diff == pytest.approx((0.1 + 0.2 + 0 + 0.05) / 4)
    # 0.6 -> 0.4 flips at 0.5; 0.5 and 0.5 are both positive decisions (>= threshold).
    assert (first.flips, first.flip_share) == (1, 0.25)
    assert (same.mean_abs_diff, same.flips) == (0.0, 0)
    # At 0.3 only the first pair flips (0.2 -> 0.3); 0.6 and 0.4 are both positive decisions.
    lower = evaluate(labels, {"a": champion, "b": challenger}, threshold=0.3).agreement[0]
    assert lower.flips == 1
    assert [m.model for m in evaluation.models] == ["mlp v1", "transformer v2", "same"]


def test_labels_of_one_class_give_no_auc_and_say_why():
    scores = np.array([0.1, 0.7, 0.4])
    negatives = evaluate(np.zeros(3), {"m": scores}).models[0]
    assert negatives.roc_auc is None and negatives.pr_auc is None
    assert negatives.note is not None and "negative" in negatives.note and "both classes" in negatives.note
    assert negatives.log_loss == pytest.approx(-np.mean(np.log(1 - scores)))
    positives = evaluate(np.ones(3), {"m": scores}).models[0]
    assert positives.roc_auc is None and positives.pr_auc == 1.0
    assert positives.note is not None and "positive" in positives.note


def test_only_events_with_a_label_and_every_models_score_count():
    nan = np.nan
    labels = np.array([1.0, 0, nan, 1, 0, nan, 0])
    a = np.array([0.9, 0.1, 0.5, nan, 0.2, 0.3, 0.4])
    b = np.array([0.8, 0.2, 0.5, 0.7, nan, nan, 0.3])
    evaluation = evaluate(labels, {"a": a, "b": b})
    assert (evaluation.events, evaluation.counted, evaluation.unlabelled, evaluation.unscored) == (7, 3, 2, 2)
    assert evaluation.unscored_by_model == (("a", 1), ("b", 1))
    assert [m.count for m in evaluation.models] == [3, 3]
    assert evaluation.models[0].roc_auc == 1.0


def test_distribution_quantiles_mean_and_a_histogram_over_zero_to_one():
    labels, scores = random_case(3)
    scores[0] = 1.0
    d = evaluate(labels, {"m": scores}).models[0].distribution
    assert d.quantiles == pytest.approx(np.quantile(scores, QUANTILES))
    assert d.mean == pytest.approx(scores.mean())
    assert len(d.histogram) == HISTOGRAM_BINS and sum(d.histogram) == len(scores)
    assert d.histogram[-1] >= 1  # 1.0 is in the last bin


def test_the_roc_curve_runs_from_the_origin_to_one_one_and_never_goes_back():
    labels, scores = random_case(4, 2000)
    curve = evaluate(labels, {"m": scores}).models[0].roc_curve
    assert curve[0] == (0.0, 0.0) and curve[-1] == (1.0, 1.0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(curve))
    # The trapezoids under it give the AUC (ties are straight segments: half a pair each).
    xs, ys = np.array(curve).T
    assert np.trapezoid(ys, xs) == pytest.approx(roc_auc(labels, scores), abs=1e-9)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1], {}, "no model to evaluate"),
        ([0, 1], {"m": [0.5]}, "model 'm': 1 scores for 2 labels"),
        ([0, 2], {"m": [0.5, 0.5]}, "labels must be 0 or 1"),
        ([0, 1], {"m": [0.5, 1.5]}, "model 'm': 1 scores are not probabilities"),
        ([np.nan, 1], {"m": [0.5, np.nan]}, "no event to count among 2: 1 have no label"),
    ],
)
def test_inputs_that_cannot_be_evaluated_are_refused_saying_why(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        evaluate(np.array(labels, dtype=float), {k: np.array(v, dtype=float) for k, v in scores.items()})


def test_a_threshold_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        evaluate(np.array([0.0, 1]), {"m": np.array([0.1, 0.9])}, threshold=float("nan"))
