"""A model as a user writes one: their own class, trained on data they have, saved the way the
README's "Your own model" says for each format. Workers import ``UserNet`` by its dotted name
(``tests.integration.user_models:UserNet``), as they import a user's package."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import orjson
import torch
from torch import nn

from app.demo_events import DemoEvent, demo_events

FEATURES = 32  # what the demo stream's `features` field holds, as `demo_inputs("fraud-mlp")` declares


class UserNet(nn.Module):
    """A small MLP with dropout and batch norm: served in eval mode, its outputs differ from
    training mode's, so a runner that forgot eval() (or broke an exported program) shows."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(FEATURES, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x))


class FeatureGrid(nn.Module):
    """A model whose output does not fit a pipeline: a (batch, 2, 16) grid, not one prediction per row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 2, 16)


def features_of(events: list[DemoEvent]) -> torch.Tensor:
    return torch.tensor(np.array([orjson.loads(e.value)["features"] for e in events], dtype=np.float32))


def trained(seed: int, steps: int = 60) -> UserNet:
    """A UserNet fitted to the demo stream's labels, then in eval mode, as a user ships one."""
    torch.manual_seed(seed)
    events = list(demo_events(2_000, seed=900 + seed))
    x, y = features_of(events), torch.tensor([e.label for e in events], dtype=torch.float32)
    model = UserNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy(model(x)[:, 0], y)
        loss.backward()
        optimiser.step()
    return model.eval()


def save(model: nn.Module, kind: str, path: Path) -> Path:
    """``model`` written as the README says for ``kind``: exported, torchscript or state_dict."""
    if kind == "exported":
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, (torch.zeros(8, FEATURES),), dynamic_shapes=({0: batch},))
        torch.export.save(program, path)
    elif kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; users still have it
            torch.jit.save(torch.jit.script(model), path)
    else:
        torch.save(model.state_dict(), path)
    return path
