"""Demo models by name: their class, the inputs they take, and where their trained weights live.

A pipeline's config names a model either by one of these names or by a file
(see :mod:`models.loading`); the registry is how the demo models are loaded
"the way users load theirs": a module class plus a state-dict file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from models.demo import FraudMLP, FraudTransformer
from models.spec import WEIGHTS_DIR
from models.synthetic import FEATURES, HISTORY_FIELDS, HISTORY_STEPS


@dataclass(frozen=True)
class DemoModel:
    name: str
    version: str
    factory: type[nn.Module]
    description: str
    # The fields of models.synthetic.Transactions that forward() takes, in order, and the
    # shape of each per event (what a pipeline's `features.inputs` must say for this model).
    inputs: tuple[str, ...] = ("features",)
    shapes: tuple[tuple[int, ...], ...] = ((FEATURES,),)

    @property
    def weights(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.pt"

    @property
    def report(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.json"


DEMO_MODELS: dict[str, DemoModel] = {
    m.name: m
    for m in (
        DemoModel(
            name="fraud-mlp",
            version="2",
            factory=FraudMLP,
            description="MLP over the 32 per-event features (light, transport-bound)",
        ),
        DemoModel(
            name="fraud-transformer",
            version="2",
            factory=FraudTransformer,
            description="2-layer transformer over the 16 most recent transactions plus the event's features "
            "(heavy, compute-bound)",
            inputs=("features", "history"),
            shapes=((FEATURES,), (HISTORY_STEPS, HISTORY_FIELDS)),
        ),
    )
}
