"""Train the demo models on a synthetic transaction stream and measure their held-out ROC AUC
on another stream.

    python -m models.train                 # all demo models, weights into models/weights/
    python -m models.train fraud-mlp --out /tmp/weights

Deterministic: fixed seeds, one thread, deterministic kernels, so the same command
gives the same weights on the same torch build. Writes ``NAME.pt`` (a state dict,
loadable with ``torch.load(..., weights_only=True)``) and ``NAME.json`` (the quality
report quoted in the README).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.registry import DEMO_MODELS, WEIGHTS_DIR, DemoModel
from models.synthetic import Transactions, account_histories, generate, history_values, roc_auc

TRAIN_SEED = 20261128
HOLDOUT_SEED = 7
# Training and held-out events are every SPREAD-th of a longer stream (see stream_sample).
SPREAD = 4


@dataclass(frozen=True)
class TrainSettings:
    samples: int = 200_000
    holdout: int = 50_000
    epochs: int = 6
    batch_size: int = 512
    learning_rate: float = 2e-3


# The transformer learns the burst pattern from fewer samples and costs ~50x more per
# sample to train on one thread.
DEFAULT_SETTINGS = {
    "fraud-mlp": TrainSettings(),
    "fraud-transformer": TrainSettings(samples=60_000, epochs=5, batch_size=256, learning_rate=1e-3),
}


def model_inputs(model: DemoModel, data: Transactions) -> tuple[torch.Tensor, ...]:
    """The tensors this demo model takes, in ``forward`` order. ``history`` is not in the
    events: it is built from the account's earlier events in ``data``'s stream, as sluice
    builds it when serving."""

    def tensor(field: str) -> np.ndarray:
        if field == "history":
            return account_histories(data.accounts, history_values(data))
        return getattr(data, field)

    return tuple(torch.from_numpy(tensor(field)) for field in model.inputs)


def stream_sample(model: DemoModel, samples: int, seed: int) -> tuple[tuple[torch.Tensor, ...], np.ndarray]:
    """``samples`` events spread evenly over a stream ``SPREAD`` times as long (every
    ``SPREAD``-th event, histories built from the whole stream): their accounts' histories
    range from a new account's to full ones, as on a topic that has run for a while, not
    only the short ones at a stream's start. The model's inputs for them, and their labels."""
    data = generate(samples * SPREAD, seed=seed)
    every = slice(SPREAD - 1, None, SPREAD)
    return tuple(x[every] for x in model_inputs(model, data)), data.labels[every]


def score(module: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int = 4096) -> np.ndarray:
    module.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, inputs[0].shape[0], batch_size):
            out.append(module(*(x[start : start + batch_size] for x in inputs)))
    return torch.cat(out).numpy()


def train(model: DemoModel, settings: TrainSettings) -> tuple[nn.Module, dict[str, object]]:
    torch.manual_seed(TRAIN_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    module = model.factory()
    inputs, train_labels = stream_sample(model, settings.samples, TRAIN_SEED)
    holdout_inputs, holdout_labels = stream_sample(model, settings.holdout, HOLDOUT_SEED)
    labels = torch.from_numpy(train_labels)
    optimiser = torch.optim.Adam(module.parameters(), lr=settings.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(TRAIN_SEED)
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        module.train()
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(module.logits(*(x[idx] for x in inputs)), labels[idx])  # type: ignore[operator]
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        print(f"  {model.name} epoch {epoch + 1}/{settings.epochs}: loss {total / len(order):.4f}", flush=True)
    auc = roc_auc(holdout_labels, score(module, holdout_inputs))
    report: dict[str, object] = {
        "model": model.name,
        "version": model.version,
        "description": model.description,
        "holdout_roc_auc": round(auc, 4),
        "holdout_samples": settings.holdout,
        "holdout_fraud_rate": round(float(holdout_labels.mean()), 4),
        "train_samples": settings.samples,
        "epochs": settings.epochs,
        "train_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in module.parameters()),
    }
    return module, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train sluice's demo models on synthetic data.")
    parser.add_argument("models", nargs="*", default=sorted(DEMO_MODELS), help="demo model names")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where to write NAME.pt and NAME.json")
    parser.add_argument("--samples", type=int, default=None, help="training samples (default: per model)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: per model)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in DEMO_MODELS]
    if unknown:
        parser.error(f"unknown demo model(s) {unknown}; known: {sorted(DEMO_MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        model = DEMO_MODELS[name]
        settings = DEFAULT_SETTINGS.get(name, TrainSettings())
        settings = TrainSettings(
            samples=args.samples or settings.samples,
            holdout=settings.holdout,
            epochs=args.epochs or settings.epochs,
            batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
        )
        print(f"training {name} on {settings.samples} synthetic transactions", flush=True)
        module, report = train(model, settings)
        torch.save(module.state_dict(), args.out / f"{name}.pt")
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"{name}: held-out ROC AUC {report['holdout_roc_auc']} -> {args.out / (name + '.pt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
