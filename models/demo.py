"""The demo models, scoring the synthetic transactions of :mod:`models.synthetic`.

Each returns a fraud probability per event, shape ``(batch,)``, so the runner and the
output records need no model-specific post-processing.
"""

from __future__ import annotations

import torch
from torch import nn

from models.synthetic import FEATURES


class FraudMLP(nn.Module):
    """The light demo model: an MLP over the 32 per-event features (transport-bound)."""

    def __init__(self, features: int = FEATURES, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features))
