"""Which of a pipeline's inputs a model takes, when models of different inputs score the same events.

A pipeline's inputs are its model's ``forward`` arguments in order (``[pipelines.NAME.features]
inputs``). Comparing models on the same events, the candidate may take fewer: the demo MLP
(``forward(self, features)``) beside the transformer (``forward(self, features, history)``) in
the transformer's pipeline. Such a model is given, in its own order, the inputs its ``forward``
names, when each of its parameters is named like one of the pipeline's inputs and they are
fewer. Any other model (``*args``, other names, an exported program or TorchScript whose
``forward`` says no names) takes every input in the pipeline's order, as the worker gives them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from torch import nn

from app.config import PipelineConfig
from models.fit import check_fits
from models.loading import LoadedModel, load_model
from models.protocol import Runner
from models.spec import ModelSpec
from streams.errors import ModelLoadError, ModelOutputError


def input_names(pipeline: PipelineConfig) -> list[str]:
    """The names of the pipeline's inputs, in the order the pipeline hands them to a model."""
    return [i.name for i in pipeline.inputs] if pipeline.inputs else [f.field for f in pipeline.schema.inputs]


def inputs_taken(module: nn.Module, pipeline: PipelineConfig) -> tuple[int, ...] | None:
    """The indices of the pipeline's inputs ``module`` takes, by its ``forward``'s parameter names;
    None when it takes them all, in the pipeline's order."""
    names = input_names(pipeline)
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):  # a compiled or exported forward may have no signature to read
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not parameters or any(p.kind not in positional for p in parameters):
        return None
    wanted = [p.name for p in parameters]
    if len(wanted) >= len(names) or not set(wanted) <= set(names) or len(set(wanted)) < len(wanted):
        return None
    return tuple(names.index(name) for name in wanted)


def narrowed(pipeline: PipelineConfig, taken: tuple[int, ...] | None) -> PipelineConfig:
    """``pipeline`` as the model sees it: only the inputs it takes (for its fit check and warm-up)."""
    if taken is None or not pipeline.inputs:
        return pipeline
    return replace(pipeline, inputs=tuple(pipeline.inputs[i] for i in taken))


class TakingInputs:
    """A runner given only the pipeline's inputs at ``taken``, in that order."""

    def __init__(self, runner: Runner, taken: tuple[int, ...]) -> None:
        self.runner = runner
        self.taken = taken

    @property
    def name(self) -> str:
        return self.runner.name

    @property
    def version(self) -> str:
        return self.runner.version

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return await self.runner.predict([inputs[i] for i in self.taken])

    async def aclose(self) -> None:
        await self.runner.aclose()


def taking(runner: Runner, taken: tuple[int, ...] | None) -> Runner:
    return runner if taken is None else TakingInputs(runner, taken)


def load_fitted_model(pipeline: PipelineConfig, spec: ModelSpec) -> tuple[LoadedModel, tuple[int, ...] | None]:
    """``spec`` loaded, the inputs it takes, and shown to score them with one prediction per row
    (``app.build.load_checked_model``'s check, on the model's own inputs)."""
    loaded = load_model(spec)
    taken = inputs_taken(loaded.module, pipeline) if pipeline.inputs else None
    try:
        check_fits(loaded.module, loaded.name, narrowed(pipeline, taken).input_shapes)
    except ModelOutputError as exc:
        raise ModelLoadError(f"{spec.describe()} does not fit pipeline {pipeline.name}: {exc}") from None
    return loaded, taken
