"""The contract between the engine (``streams``) and a model: the ``Runner`` protocol.

``streams`` imports this module and nothing else from ``models``, so the pipeline can be
tested with a fake runner and never needs torch to reason about batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class ModelError(Exception):
    """A model could not be loaded or could not score a batch.

    ``retriable`` tells the pipeline whether trying the same batch again may succeed
    (a transient device error) or whether the inputs themselves are at fault.
    """

    retriable: bool = False


class ModelLoadError(ModelError):
    """The model named in the config cannot be loaded: missing file, wrong class, bad weights."""


class PredictionCountError(ModelError):
    """The model returned a different number of predictions than it was given inputs."""


@runtime_checkable
class Runner(Protocol):
    """Scores whole batches, off the event loop."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """One prediction per row of ``inputs[0]``; ``inputs`` are the model's tensors in order."""
        ...

    async def aclose(self) -> None: ...
