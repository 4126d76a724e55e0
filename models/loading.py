"""Load a model the ways users ship theirs: a demo name, a ``torch.export`` archive, a
TorchScript file, or a class plus a state dict.

What each format trusts (the README's Security section says the same):

- state dicts load with ``torch.load(weights_only=True)``: tensors only, no objects;
- ``torch.export`` archives are checked entry by entry before torch opens them
  (``models.export_archive``), and torch reads exactly the bytes that were checked;
- TorchScript files are programs (torch's own security policy says so): they load only
  when the config opts in with ``trust_torchscript = true`` on that model.

Every file is opened once, after a check that it is a regular file (a FIFO would block the
open forever), and every failure, whatever torch raises, becomes a ``ModelLoadError`` that
names the file.
"""

from __future__ import annotations

import importlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from models.export_archive import check_export_archive, reason, repack
from models.registry import DEMO_MODELS
from models.spec import ModelSpec  # described without torch, so reading a config needs none
from streams.errors import ModelLoadError


@dataclass(frozen=True)
class LoadedModel:
    module: nn.Module
    name: str
    version: str


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a message: "a FIFO", "a directory", ..."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device")):
        if test(mode):
            return kind
    return "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def open_model_file(path: Path, what: str, confine_to: tuple[Path, ...] = ()) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file (inside ``confine_to`` when given)."""
    try:
        before = os.stat(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(before.st_mode):
        # Checked before opening: opening a FIFO waits for a writer, a device may act on open.
        raise ModelLoadError(f"{what} {path} is {file_kind(before.st_mode)}, not a regular file")
    # Non-blocking, in case the path became a FIFO since the stat; no symlink at the last step
    # for a swap, whose path was resolved when it was checked.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if confine_to:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelLoadError(f"cannot open {what} {path}: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise ModelLoadError(f"{what} {path} is {file_kind(opened.st_mode)}, not a regular file")
        if confine_to:
            real = _real_path(fd, path)
            if not any(real.is_relative_to(folder.resolve()) for folder in confine_to):
                raise ModelLoadError(f"{what} {path} now lies at {real}, outside {[str(f) for f in confine_to]}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _real_path(fd: int, path: Path) -> Path:
    """Where the open file really is: Linux tells it by descriptor, whatever was renamed since."""
    by_fd = Path(f"/proc/self/fd/{fd}")
    return Path(os.readlink(by_fd)) if by_fd.is_symlink() else path.resolve()


def import_class(dotted: str) -> type[nn.Module]:
    module_name, sep, attr = dotted.partition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"model class {dotted!r} must look like 'package.module:ClassName'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # Broad on purpose: importing user code can fail any way (SyntaxError, ...)
        raise ModelLoadError(f"cannot import model class {dotted!r}: {reason(exc)}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{dotted!r} is not a torch.nn.Module subclass")
    return cls


def load_state(module: nn.Module, path: Path, what: str, confine_to: tuple[Path, ...] = ()) -> nn.Module:
    with open_model_file(path, f"weights file for {what}", confine_to) as file:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            module.load_state_dict(state, strict=True)
        except Exception as exc:  # Broad on purpose: torch raises many types for a bad file; each is a load error
            raise ModelLoadError(f"weights file {path} does not fit {what}: {reason(exc)}") from exc
    return module


def load_exported(path: Path, confine_to: tuple[Path, ...] = ()) -> nn.Module:
    with open_model_file(path, "exported program", confine_to) as file:
        data = file.read()
    # Torch reads a fresh archive of the entries just checked, never the file's bytes: a zip can
    # show the checker's reader one directory and torch's another (models.strict_zip), and the
    # file may change after the check.
    archive = repack(check_export_archive(data, path))
    del data
    try:
        # What torch.export.load calls first. On a RuntimeError, torch.export.load logs a 15-line
        # traceback, reads the archive again in its legacy format (another zip reader), and raises
        # an error that hides the cause; the checked archive is in the pt2 format, so read it as that.
        load_pt2 = importlib.import_module("torch.export.pt2_archive._package").load_pt2
    except (ImportError, AttributeError):  # a torch without it: its own loader, as before
        load_pt2 = None
    try:
        if load_pt2 is None:
            return torch.export.load(io.BytesIO(archive)).module()
        programs = load_pt2(io.BytesIO(archive)).exported_programs
        if "model" not in programs:  # the one torch.export.load returns
            raise ModelLoadError(
                f"{path} is not a loadable torch.export archive: it holds no program named 'model' "
                f"(only {sorted(programs)})"
            )
        return programs["model"].module()
    except ModelLoadError:
        raise
    except Exception as exc:  # Broad on purpose: torch's deserializer and verifier raise any type
        raise ModelLoadError(f"{path} is not a loadable torch.export archive: {reason(exc)}") from exc


def load_torchscript(path: Path, trusted: bool, confine_to: tuple[Path, ...] = ()) -> nn.Module:
    if not trusted:
        raise ModelLoadError(
            f"refusing TorchScript file {path}: TorchScript is code that runs when loaded; "
            "set trust_torchscript = true on this model in the config to serve it"
        )
    with open_model_file(path, "TorchScript file", confine_to) as file:
        try:
            with warnings.catch_warnings():
                # torch deprecates TorchScript in favour of torch.export; the README says so,
                # and users with TorchScript files still deserve to be served.
                warnings.simplefilter("ignore", FutureWarning)
                module: nn.Module = torch.jit.load(file, map_location="cpu")
        except Exception as exc:  # Broad on purpose: torch.jit.load raises many types for a bad file
            raise ModelLoadError(f"{path} is not a loadable TorchScript archive: {reason(exc)}") from exc
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
        module = load_exported(spec.exported, spec.confine_to)
        return LoadedModel(module, spec.name or spec.exported.stem, spec.version or "1")
    if spec.torchscript is not None:
        module = load_torchscript(spec.torchscript, spec.trust_torchscript, spec.confine_to)
        return LoadedModel(module, spec.name or spec.torchscript.stem, spec.version or "1")
    if spec.module_class is not None:
        if spec.state_dict is None:
            raise ModelLoadError(f"model class {spec.module_class!r} needs a state_dict file")
        cls = import_class(spec.module_class)
        try:
            module = cls(**spec.init_args)
        except Exception as exc:  # Broad on purpose: a user's constructor can raise anything
            raise ModelLoadError(f"cannot construct {spec.module_class} with {spec.init_args}: {reason(exc)}") from exc
        module = load_state(module, spec.state_dict, spec.module_class, spec.confine_to)
        return LoadedModel(module, spec.name or cls.__name__, spec.version or "1")
    raise ModelLoadError("no model given: set one of demo, exported, torchscript or class")
