"""The contract between the engine (``streams``) and a model: the ``Runner`` protocol.

``streams`` imports this module and nothing else from ``models``, so the pipeline can be
tested with a fake runner and never needs torch to reason about batches. What a runner
raises on purpose (``ModelError`` and its kinds) lives in the one error tree, ``streams.errors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


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
