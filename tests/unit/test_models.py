from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS
from models.runner import TorchRunner, resolve_device
from models.synthetic import generate, roc_auc
from models.train import HOLDOUT_SEED, TrainSettings, model_inputs, score, train
from streams.errors import ModelLoadError, PredictionCountError


def test_roc_auc_matches_hand_computed_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.5, 0.5])) == 0.875
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_synthetic_data_is_deterministic_and_has_a_planted_signal():
    a, b = generate(2_000, seed=3), generate(2_000, seed=3)
    assert np.array_equal(a.features, b.features)
    assert np.array_equal(a.history, b.history)
    assert 0.02 < a.labels.mean() < 0.2
    # The burst at the end of the history is the planted signal: fraud has larger recent amounts.
    recent = a.history[:, -3:, 0].mean(axis=1)
    assert roc_auc(a.labels, recent) > 0.6


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_shipped_demo_weights_reach_the_quality_their_report_claims(name):
    demo = DEMO_MODELS[name]
    loaded = load_model(ModelSpec(demo=name))
    report = json.loads(demo.report.read_text())
    holdout = generate(report["holdout_samples"], seed=HOLDOUT_SEED)
    auc = roc_auc(holdout.labels, score(loaded.module, model_inputs(demo, holdout)))
    assert auc == pytest.approx(report["holdout_roc_auc"], abs=1e-3)
    assert auc > 0.75


def test_training_is_deterministic():
    settings = TrainSettings(samples=4_000, holdout=2_000, epochs=1)
    first, report1 = train(DEMO_MODELS["fraud-mlp"], settings)
    second, report2 = train(DEMO_MODELS["fraud-mlp"], settings)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(p, q)
    assert report1["holdout_roc_auc"] == report2["holdout_roc_auc"]


def test_loading_names_what_is_wrong(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown demo model 'nope'"):
        load_model(ModelSpec(demo="nope"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec(torchscript=tmp_path / "missing.pt", trust_torchscript=True))
    with pytest.raises(ModelLoadError, match="cannot import model class"):
        load_model(ModelSpec(module_class="nowhere.at_all:Net", state_dict=tmp_path / "w.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save(nn.Linear(3, 1).state_dict(), wrong)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_model(ModelSpec(module_class="models.demo:FraudMLP", state_dict=wrong))


def test_every_kind_of_model_file_loads_like_the_demo(tmp_path):
    demo = load_model(ModelSpec(demo="fraud-mlp")).module
    weights = tmp_path / "w.pt"
    torch.save(demo.state_dict(), weights)
    scripted = tmp_path / "m.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates scripting; users still have files
        torch.jit.save(torch.jit.script(demo), str(scripted))
    exported = tmp_path / "m.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(demo, (torch.zeros(4, 32),), dynamic_shapes={"features": {0: batch}}),
        str(exported),
    )
    x = torch.from_numpy(generate(64, seed=1).features)
    expected = demo(x)
    by_class = load_model(ModelSpec(module_class="models.demo:FraudMLP", state_dict=weights, version="7"))
    assert by_class.version == "7"
    assert torch.equal(by_class.module(x), expected)
    by_script = load_model(ModelSpec(torchscript=scripted, trust_torchscript=True))
    assert torch.allclose(by_script.module(x), expected)
    by_export = load_model(ModelSpec(exported=exported))
    assert by_export.name == "m"
    assert torch.allclose(by_export.module(x), expected)


async def test_the_runner_scores_off_the_event_loop_one_prediction_per_input():
    loaded = load_model(ModelSpec(demo="fraud-mlp"))
    runner = TorchRunner(loaded.module, name=loaded.name, version=loaded.version, device="cpu")
    try:
        features = generate(10, seed=2).features
        out = await runner.predict([features])
        assert out.shape == (10,)
        assert ((out >= 0) & (out <= 1)).all()
        timings = runner.warm_up([(32,)], [1, 4])
        assert set(timings) == {1, 4}
    finally:
        await runner.aclose()


class TwoOut(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:2, 0]


async def test_a_length_mismatch_names_both_counts():
    runner = TorchRunner(TwoOut(), name="two", version="1", device="cpu")
    try:
        with pytest.raises(PredictionCountError, match="returned 2 predictions for a batch of 5 inputs"):
            await runner.predict([np.zeros((5, 3), dtype=np.float32)])
    finally:
        await runner.aclose()


def test_auto_device_is_cuda_only_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
