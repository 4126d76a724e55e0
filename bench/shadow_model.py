"""A shadow for the benchmark: the demo MLP, computed ``repeat`` times per batch.

Its scores are the MLP's own (so agreement is total and easy to check) and its cost is
``repeat`` times the MLP's, in real CPU work, not a sleep: on a 2-core machine that is what
could take time from the champion, which is the point of measuring a shadow.
"""

from __future__ import annotations

import torch

from models.demo import FraudMLP


class RepeatedMLP(FraudMLP):
    def __init__(self, repeat: int = 10) -> None:
        super().__init__()
        self.repeat = repeat

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = super().forward(features)
        for _ in range(self.repeat - 1):
            out = super().forward(features)
        return out
