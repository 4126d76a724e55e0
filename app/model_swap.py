"""What a model swap may load, checked before anything is read from disk.

A swap names the new model the way the config does, minus anything that would run code
the operator did not configure: a demo model, a ``torch.export`` archive, a TorchScript
file, or a new state dict for the pipeline's configured class (loaded with
``weights_only=True``). Files must lie inside the pipeline's ``model_dirs``, after
symlinks are resolved, and a version is required so every output says which model made it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from app.config import PipelineConfig
from models.loading import ModelSpec
from models.registry import DEMO_MODELS

KINDS = ("demo", "exported", "torchscript", "state_dict")


class SwapRejected(Exception):
    """The request is not allowed or not well formed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _inside(path: Path, folders: tuple[Path, ...]) -> bool:
    real = path.resolve()
    return any(real.is_relative_to(folder.resolve()) for folder in folders)


def swap_spec(pipeline: PipelineConfig, request: Any) -> ModelSpec:
    """The ``ModelSpec`` a swap request asks for, or ``SwapRejected`` saying why not."""
    if not isinstance(request, dict):
        raise SwapRejected(400, 'expected a JSON object like {"state_dict": "weights/v2.pt", "version": "2"}')
    unknown = sorted(set(request) - {*KINDS, "version", "name"})
    if unknown:
        raise SwapRejected(400, f"unknown field(s) {unknown}; expected one of {list(KINDS)}, 'version' and 'name'")
    chosen = [k for k in KINDS if k in request]
    if len(chosen) != 1:
        raise SwapRejected(400, f"set exactly one of {list(KINDS)} (found {chosen or 'none'})")
    version, name = request.get("version"), request.get("name")
    if not isinstance(version, str) or not version.strip():
        raise SwapRejected(400, "'version' is required: a non-empty string every output will carry")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise SwapRejected(400, "'name' must be a non-empty string")
    kind = chosen[0]
    value = request[kind]
    if not isinstance(value, str) or not value.strip():
        raise SwapRejected(400, f"'{kind}' must be a non-empty string")
    if kind == "demo":
        if value not in DEMO_MODELS:
            raise SwapRejected(400, f"unknown demo model {value!r}; known: {sorted(DEMO_MODELS)}")
        return ModelSpec(demo=value, name=name, version=version)
    folders = pipeline.model_dirs
    path = Path(value) if Path(value).is_absolute() else folders[0] / value
    if not _inside(path, folders):
        raise SwapRejected(
            403,
            f"{path} is outside the folders models may be loaded from "
            f"(pipelines.{pipeline.name}.model_dirs = {[str(f) for f in folders]})",
        )
    if kind == "exported":
        return ModelSpec(exported=path, name=name, version=version)
    if kind == "torchscript":
        return ModelSpec(torchscript=path, name=name, version=version)
    return _new_weights(pipeline, path, name, version)


def _new_weights(pipeline: PipelineConfig, path: Path, name: str | None, version: str) -> ModelSpec:
    """New weights for the class the pipeline already serves."""
    current = pipeline.model
    if current.demo is not None:
        factory = DEMO_MODELS[current.demo].factory
        dotted = f"{factory.__module__}:{factory.__qualname__}"
        return ModelSpec(module_class=dotted, state_dict=path, name=name or current.demo, version=version)
    if current.module_class is not None:
        return replace(current, state_dict=path, name=name or current.name, version=version)
    raise SwapRejected(
        400,
        f"pipeline {pipeline.name} serves {current.describe()}, which has no class to load a state dict "
        "into; send an 'exported' or 'torchscript' file instead",
    )
