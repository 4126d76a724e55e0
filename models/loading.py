"""Load a model the ways users ship theirs: a demo name, a ``torch.export`` archive, a
TorchScript file, or a class plus a state dict.

Nothing here unpickles arbitrary objects: state dicts load with ``weights_only=True``,
and exported programs and TorchScript archives hold no Python code.
"""

from __future__ import annotations

import importlib
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.protocol import ModelLoadError
from models.registry import DEMO_MODELS


@dataclass(frozen=True)
class ModelSpec:
    """Which model a pipeline serves.

    Exactly one of ``demo``, ``exported``, ``torchscript`` or ``module_class`` is set.
    """

    demo: str | None = None
    exported: Path | None = None  # torch.export.save(...) archive, usually .pt2
    torchscript: Path | None = None
    module_class: str | None = None  # "package.module:ClassName"
    state_dict: Path | None = None
    init_args: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    version: str | None = None

    def describe(self) -> str:
        if self.demo:
            return f"demo model {self.demo!r}"
        if self.exported:
            return f"exported program {self.exported}"
        if self.torchscript:
            return f"TorchScript file {self.torchscript}"
        return f"{self.module_class} with weights {self.state_dict}"


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    name: str
    version: str


def import_class(dotted: str) -> type[nn.Module]:
    module_name, sep, attr = dotted.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"model class {dotted!r} must look like 'package.module:ClassName'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import model class {dotted!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{dotted!r} is not a torch.nn.Module subclass")
    return cls


def load_state(module: nn.Module, path: Path, what: str) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} for {what} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as exc:
        raise ModelLoadError(f"weights file {path} does not fit {what}: {exc}") from exc
    return module


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the module on the CPU, weights loaded; the runner moves it to its device."""
    if spec.demo is not None:
        demo = DEMO_MODELS.get(spec.demo)
        if demo is None:
            raise ModelLoadError(f"unknown demo model {spec.demo!r}; known: {sorted(DEMO_MODELS)}")
        module = load_state(demo.factory(), demo.weights, f"demo model {demo.name!r}")
        return LoadedModel(module, spec.name or demo.name, spec.version or demo.version)
    if spec.exported is not None:
        if not spec.exported.is_file():
            raise ModelLoadError(f"exported program {spec.exported} does not exist")
        try:
            module = torch.export.load(str(spec.exported)).module()
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise ModelLoadError(f"{spec.exported} is not a loadable torch.export archive: {exc}") from exc
        return LoadedModel(module, spec.name or spec.exported.stem, spec.version or "1")
    if spec.torchscript is not None:
        if not spec.torchscript.is_file():
            raise ModelLoadError(f"TorchScript file {spec.torchscript} does not exist")
        try:
            with warnings.catch_warnings():
                # torch deprecates TorchScript in favour of torch.export; the README says so,
                # and users with TorchScript files still deserve to be served.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(spec.torchscript), map_location="cpu")
        except RuntimeError as exc:
            raise ModelLoadError(f"{spec.torchscript} is not a loadable TorchScript archive: {exc}") from exc
        return LoadedModel(module, spec.name or spec.torchscript.stem, spec.version or "1")
    if spec.module_class is not None:
        if spec.state_dict is None:
            raise ModelLoadError(f"model class {spec.module_class!r} needs a state_dict file")
        cls = import_class(spec.module_class)
        try:
            module = cls(**spec.init_args)
        except TypeError as exc:
            raise ModelLoadError(f"cannot construct {spec.module_class} with {spec.init_args}: {exc}") from exc
        module = load_state(module, spec.state_dict, spec.module_class)
        return LoadedModel(module, spec.name or cls.__name__, spec.version or "1")
    raise ModelLoadError("no model given: set one of demo, exported, torchscript or class")
