from __future__ import annotations

import pytest

from streams.flow.cost_model import CostModel, bucket_of

# A small transformer measured on this kind of machine: batch 128 is slower per event than 32.
TRANSFORMER = {32: 0.0024, 128: 0.013, 512: 0.027}


def test_buckets_are_geometric():
    assert [bucket_of(n) for n in (1, 2, 3, 4, 5, 6)] == [0, 1, 2, 3, 3, 4]
    assert bucket_of(512) > bucket_of(256) > bucket_of(128)


def test_it_follows_non_linear_measurements_instead_of_assuming_a_line():
    model = CostModel()
    model.seed(TRANSFORMER)
    for size, seconds in TRANSFORMER.items():
        assert model.predict(size) == pytest.approx(seconds)
    # Between measured points it interpolates; a linear fit through the origin would say 6.75 ms at 128.
    assert 0.0024 < model.predict(64) < 0.013
    assert model.predict(256) == pytest.approx(0.013 + (0.027 - 0.013) * (256 - 128) / (512 - 128))


def test_beyond_the_largest_batch_it_extrapolates_per_event():
    model = CostModel()
    model.seed({100: 0.010})
    assert model.predict(200) == pytest.approx(0.020)
    assert model.predict(10) == pytest.approx(0.010), "below the smallest batch the fixed cost stays"


def test_recent_measurements_weigh_more_and_variance_makes_it_cautious():
    model = CostModel(alpha=0.5)
    model.seed({64: 0.010})
    for _ in range(20):
        model.observe(64, 0.020)
    assert model.predict(64) == pytest.approx(0.020, rel=0.01)
    jittery = CostModel(alpha=0.2)
    jittery.seed({64: 0.010})
    for i in range(50):
        jittery.observe(64, 0.008 if i % 2 else 0.012)
    assert jittery.predict(64) > 0.0105, "a batch that varies is planned above its mean"


def test_without_measurements_it_uses_the_fallback_rate():
    assert CostModel(fallback_seconds_per_event=0.001).predict(10) == pytest.approx(0.01)


def test_the_fastest_size_per_event_is_not_always_the_largest():
    model = CostModel()
    model.seed({1: 0.00064, 8: 0.00096, 32: 0.00188, 128: 0.0083, 512: 0.0324})  # the demo transformer
    assert model.best_throughput_size(512) == 32
    linear = CostModel()
    linear.seed({1: 0.001, 64: 0.002, 512: 0.010})
    assert linear.best_throughput_size(512) == 512
    assert linear.best_throughput_size(100) == 100


def test_a_smaller_batch_must_be_clearly_faster_to_be_preferred():
    model = CostModel()
    model.seed({64: 0.0064, 512: 0.0520})  # 64 is 1.6% faster per event: noise, not a reason
    assert model.best_throughput_size(512) == 512
