"""The demo models, scoring the synthetic transactions of :mod:`models.synthetic`.

Each returns a fraud probability per event, shape ``(batch,)``, so the runner and the
output records need no model-specific post-processing.
"""

from __future__ import annotations

import torch
from torch import nn

from models.synthetic import FEATURES, HISTORY_FIELDS, HISTORY_STEPS


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


class FraudTransformer(nn.Module):
    """The heavy demo model: a small transformer over the account's recent transactions,
    joined with the per-event features (compute-bound: batching pays most here).

    ``history`` is ``(batch, steps, fields)``: amount, merchant risk and foreign flag of the
    account's last ``steps`` events, the current one last, then a mask column (1.0 for a real
    event, 0.0 for the left padding of an account with fewer events), as sluice's ``last``
    stream feature builds it.
    """

    def __init__(
        self,
        features: int = FEATURES,
        steps: int = HISTORY_STEPS,
        fields: int = HISTORY_FIELDS,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        feedforward: int = 256,
    ) -> None:
        super().__init__()
        # The last field is the mask: it says which steps to attend to, so it is not embedded.
        self.embed = nn.Linear(fields - 1, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(steps, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, feedforward, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.event = nn.Sequential(nn.Linear(features, d_model), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(3 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1))

    def logits(self, features: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        padding = history[..., -1] < 0.5
        # The current event, last, is always real. Saying so whatever the mask holds keeps an
        # input of all zeros (a warm-up batch) from attending to nothing, which gives NaN.
        padding[:, -1] = False
        encoded = self.encoder(self.embed(history[..., :-1]) + self.position, src_key_padding_mask=padding)
        # The account's recent events (mean over the real ones; padding is no evidence either
        # way) and the current event, where a takeover shows.
        weights = (~padding).unsqueeze(-1).to(encoded.dtype)
        mean = (encoded * weights).sum(dim=1) / weights.sum(dim=1)
        summary = torch.cat([mean, encoded[:, -1], self.event(features)], dim=-1)
        return self.head(summary).squeeze(-1)

    def forward(self, features: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(features, history))
