"""What a model swap may load, checked before anything is read from disk.

A swap names the new model the way the config does, minus anything that would run code
the operator did not configure: a demo model, a ``torch.export`` archive, a TorchScript
file (only where the config trusts TorchScript for that pipeline's model), or a new state
dict for the pipeline's configured class (loaded with ``weights_only=True``). Files must lie
inside the pipeline's ``model_dirs`` after symlinks are resolved, and the resolved path is
what gets loaded, opened without following a symlink and checked again once open, so a link
re-pointed after the check cannot bring in another file. A version is required so every
output says which model made it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.config import PipelineConfig
from models.loading import file_kind
from models.registry import DEMO_MODELS
from models.spec import ModelSpec
from streams.errors import SwapRejected

KINDS = ("demo", "exported", "torchscript", "state_dict")


def _checked_file(path: Path, folders: tuple[Path, ...], pipeline: str) -> Path:
    """The real path of ``path`` (symlinks resolved once, here), if it may be loaded."""
    real = path.resolve()
    if not any(real.is_relative_to(folder.resolve()) for folder in folders):
        raise SwapRejected(
            403,
            f"{path} is outside the folders models may be loaded from "
            f"(pipelines.{pipeline}.model_dirs = {[str(f) for f in folders]})",
        )
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return real  # missing or unreadable: the loader says which, and the old model keeps serving
    if not stat.S_ISREG(mode):
        # Before anything opens it: opening a FIFO would hang the swap until someone writes to it.
        raise SwapRejected(400, f"{path} is {file_kind(mode)}, not a regular file")
    return real


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
    path = _checked_file(Path(value) if Path(value).is_absolute() else folders[0] / value, folders, pipeline.name)
    if kind == "exported":
        return ModelSpec(exported=path, name=name, version=version, confine_to=folders)
    if kind == "torchscript":
        # Never implied by a request: only the operator's opt-in on this pipeline's model allows code.
        if not pipeline.model.trust_torchscript:
            raise SwapRejected(
                403,
                f"pipeline {pipeline.name} does not trust TorchScript (a TorchScript file is code): "
                f"set trust_torchscript = true in [pipelines.{pipeline.name}.model] to allow it",
            )
        return ModelSpec(torchscript=path, name=name, version=version, trust_torchscript=True, confine_to=folders)
    return _new_weights(pipeline, path, name, version)


def _new_weights(pipeline: PipelineConfig, path: Path, name: str | None, version: str) -> ModelSpec:
    """New weights for the class the pipeline already serves."""
    current = pipeline.model
    if current.demo is not None:
        factory = DEMO_MODELS[current.demo].factory
        dotted = f"{factory.__module__}:{factory.__qualname__}"
        return ModelSpec(
            module_class=dotted,
            state_dict=path,
            name=name or current.demo,
            version=version,
            confine_to=pipeline.model_dirs,
        )
    if current.module_class is not None:
        return replace(
            current, state_dict=path, name=name or current.name, version=version, confine_to=pipeline.model_dirs
        )
    raise SwapRejected(
        400,
        f"pipeline {pipeline.name} serves {current.describe()}, which has no class to load a state dict "
        "into; send an 'exported' or 'torchscript' file instead",
    )
