"""The demo MLP with faults a real model can have, loaded by a worker through `class = ...` in its config.

Same weights as fraud-mlp, so everything but the fault scores as in production.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from models.demo import FraudMLP


class PoisonedFraudMLP(FraudMLP):
    """Raises on any batch that holds an event whose first feature is ``poison``: an input its
    code does not handle, as a real model may."""

    def __init__(self, poison: float = 1234.5) -> None:
        super().__init__()
        self.poison = poison

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if bool((features[:, 0] == self.poison).any()):
            raise ValueError(f"feature 0 is {self.poison}: not a value this model handles")
        return super().forward(features)


class SwitchableFraudMLP(FraudMLP):
    """Fails on every input while the file ``broken_flag`` exists: a lost device, say, that comes back."""

    def __init__(self, broken_flag: str = "") -> None:
        super().__init__()
        self.broken_flag = Path(broken_flag)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.broken_flag.exists():
            raise RuntimeError("device lost (test switch)")
        return super().forward(features)


class HangingFraudMLP(FraudMLP):
    """Does not answer while the file ``hang_flag`` exists: a stuck device or a deadlock, which only
    the inference timeout can notice. Answers again once the file is gone."""

    def __init__(self, hang_flag: str = "") -> None:
        super().__init__()
        self.hang_flag = Path(hang_flag)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        while self.hang_flag.exists():
            time.sleep(0.02)
        return super().forward(features)


class SlowFraudMLP(FraudMLP):
    """The demo MLP made ``delay_s`` slower per batch: a heavy candidate model, for a shadow."""

    def __init__(self, delay_s: float = 0.05) -> None:
        super().__init__()
        self.delay_s = delay_s

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return super().forward(features)
