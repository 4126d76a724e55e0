from __future__ import annotations

import json
import os
import threading
import time
import warnings

import numpy as np
import orjson
import pytest
import torch
from torch import nn

from app.demo_events import CHUNK, chunk_seed, demo_events
from models.demo import FraudTransformer
from models.loading import ModelSpec, load_model
from models.registry import DEMO_MODELS
from models.runner import TorchRunner, resolve_device
from models.synthetic import account_histories, generate, history_values, roc_auc
from models.train import HOLDOUT_SEED, TrainSettings, score, stream_sample, train
from streams.errors import ModelLoadError, PredictionCountError


def test_roc_auc_matches_hand_computed_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.5, 0.5])) == 0.875
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_synthetic_data_is_deterministic_and_has_a_planted_signal():
    a, b = generate(20_000, seed=3), generate(20_000, seed=3)
    for field in ("features", "amount", "merchant_risk", "foreign", "accounts", "takeover", "labels"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert 0.02 < a.labels.mean() < 0.2
    assert 0.03 < a.takeover.mean() < 0.08
    # The planted signal: takeovers are fraud-prone, and their transactions are large.
    assert a.labels[a.takeover].mean() > 3 * a.labels[~a.takeover].mean()
    assert roc_auc(a.labels, a.amount) > 0.6
    # A takeover is a burst of the account's events: most follow another of the same account's.
    prior = account_histories(a.accounts, a.takeover[:, None].astype(np.float32), steps=2)[:, 0, 0]
    assert prior[a.takeover].mean() > 0.5


def test_account_histories_match_a_hand_written_example():
    accounts = np.array([7, 3, 7, 7, 3])
    values = np.array([[1, 10, 0], [2, 20, 1], [3, 30, 0], [4, 40, 1], [5, 50, 0]], dtype=np.float32)
    pad = [0, 0, 0, 0]
    expected = [
        [pad, pad, [1, 10, 0, 1]],
        [pad, pad, [2, 20, 1, 1]],
        [pad, [1, 10, 0, 1], [3, 30, 0, 1]],
        [[1, 10, 0, 1], [3, 30, 0, 1], [4, 40, 1, 1]],
        [pad, [2, 20, 1, 1], [5, 50, 0, 1]],
    ]
    histories = account_histories(accounts, values, steps=3)
    assert histories.dtype == np.float32 and histories.shape == (5, 3, 4)
    assert np.array_equal(histories, np.array(expected, dtype=np.float32))
    # Fewer steps keep the most recent events.
    assert np.array_equal(account_histories(accounts, values, steps=2)[3], [[3, 30, 0, 1], [4, 40, 1, 1]])


def test_demo_events_are_reproducible_and_any_slice_is_the_same_events():
    def stripped(events):
        # ts is the wall clock when produced; the rest is the event.
        return [(e.id, e.key, e.label, {k: v for k, v in orjson.loads(e.value).items() if k != "ts"}) for e in events]

    start, count = CHUNK - 700, 2_000  # spans a chunk boundary
    whole = stripped(demo_events(count, seed=4, start=start))
    assert whole == stripped(demo_events(count, seed=4, start=start))
    head, tail = demo_events(900, seed=4, start=start), demo_events(count - 900, seed=4, start=start + 900)
    assert stripped(head) + stripped(tail) == whole
    assert stripped(demo_events(CHUNK + 1_300, seed=4))[start:] == whole
    assert [e[0] for e in whole] == [f"tx-4-{n}" for n in range(start, start + count)]
    first = whole[0][3]
    assert set(first) == {"id", "account", "features", "amount", "merchant_risk", "foreign"}
    assert whole[0][1] == first["account"].encode() and len(first["features"]) == 32


def test_training_histories_are_what_sluice_reads_back_from_the_events():
    events = [orjson.loads(e.value) for e in demo_events(CHUNK, seed=5)]
    decoded = np.array([[e[f] for f in ("amount", "merchant_risk", "foreign")] for e in events], dtype=np.float32)
    assert np.array_equal(decoded, history_values(generate(CHUNK, seed=chunk_seed(5, 0))))


def test_the_transformer_ignores_what_the_padding_holds():
    torch.manual_seed(0)
    model = FraudTransformer().eval()
    history = torch.from_numpy(account_histories(np.array([1, 1, 2]), np.ones((3, 3), dtype=np.float32)))
    features = torch.zeros(3, 32)
    noisy = history.clone()
    noisy[..., :-1] += 100.0 * (noisy[..., -1:] == 0)  # only padded steps change
    with torch.inference_mode():
        assert torch.allclose(model(features, history), model(features, noisy), atol=1e-6)
        # A batch of zeros (the runner's warm-up) says nothing is real; the current event still is.
        assert torch.isfinite(model(torch.zeros(2, 32), torch.zeros(2, 16, 4))).all()


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_shipped_demo_weights_reach_the_quality_their_report_claims(name):
    demo = DEMO_MODELS[name]
    loaded = load_model(ModelSpec(demo=name))
    report = json.loads(demo.report.read_text())
    inputs, labels = stream_sample(demo, report["holdout_samples"], HOLDOUT_SEED)
    auc = roc_auc(labels, score(loaded.module, inputs))
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


def _os_threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _until_gone(native_id: int | None) -> None:
    # A joined thread may still be listed for a moment.
    deadline = time.monotonic() + 5
    while str(native_id) in _os_threads() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2, reason="counts Linux threads")
async def test_torch_threads_hold_in_the_inference_thread_whichever_thread_built_the_runner():
    # The worker builds its runner off the event loop; OpenMP's thread count is per thread, so
    # set only there, the inference thread ran one OpenMP thread per core, spinning between
    # batches (a core burnt at 2,500 events/s in the latency benchmark).
    previous = torch.get_num_threads()
    loaded = load_model(ModelSpec(demo="fraud-mlp"))
    built: list[TorchRunner] = []
    builder = threading.Thread(
        target=lambda: built.append(
            TorchRunner(loaded.module, name=loaded.name, version=loaded.version, device="cpu", threads=1)
        )
    )
    builder.start()
    builder.join()
    _until_gone(builder.native_id)
    runner = built[0]
    try:
        before = _os_threads()
        runner.warm_up([(32,)], [1, 64, 512])
        for rows in (1, 7, 64, 512, 4096):
            await runner.predict([generate(rows, seed=2).features])
        inference_thread = str(runner._executor.submit(threading.get_native_id).result())
        assert _os_threads() - before == {inference_thread}  # and no OpenMP team beside it
    finally:
        await runner.aclose()
        torch.set_num_threads(previous)


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
