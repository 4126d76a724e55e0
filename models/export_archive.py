"""Check a ``torch.export`` archive (``.pt2``) before torch reads it.

``torch.export.load`` runs code a crafted archive carries, in four places (torch 2.15,
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``):

- weights and tensor constants marked ``use_pickle`` in ``data/weights/*_weights_config.json``
  and ``data/constants/*_constants_config.json`` are read with ``torch.load(weights_only=False)``;
  constants named ``custom_obj_*`` or ``opaque_obj_*`` are unpickled outright;
- legacy ``data/weights/NAME.pt`` / ``data/constants/NAME.pt`` files and the sample inputs
  ``data/sample_inputs/NAME.pt`` go through a ``torch.load`` that falls back to
  ``weights_only=False`` when the safe loader refuses them;
- every symbolic shape (``expr_str`` in ``models/NAME.json``) is parsed by ``sympy.sympify``,
  which evaluates the string as Python, and computes what it can at once: ``7 ** 99999999999``,
  a factorial or a Float of 10^11 bits of precision freezes the process, GIL held;
- ``data/aotinductor/`` holds compiled native libraries that are loaded into the process.

So an archive passes only when it is made of what ``torch.export.save`` writes for plain
tensors: raw weight and constant bytes, each holding every byte its tensors reach (torch
makes an empty one ``torch.zeros`` of whatever sizes its config declares, 2 GB out of 0
bytes), sample inputs the safe loader accepts, and shape
expressions in the notation sympy's own ``srepr`` prints, short, with short literals and only
small powers. Anything else is refused with the entry that made the decision.

The zip itself is read strictly (``models.strict_zip``): a file can show Python's ``zipfile``
one central directory and torch's miniz reader another, so reading it "the same way torch
does" is not enough. ``check_export_archive`` returns the entries it checked, and the caller
hands torch a fresh archive of exactly those (``repack``), never the file's own bytes.
Names are read as torch reads them: the programs are the names that start with ``models/``,
spelled so; every other record is found by its name folded in ASCII only, as miniz does. A
name outside printable ASCII is refused, since Python and miniz fold such names differently.
Deflated entries are inflated in bounded steps: programs and configs hold up to
``MAX_JSON_BYTES`` each, all deflated entries together inflate to ``MAX_INFLATED_BYTES``.
"""

from __future__ import annotations

import io
import json
import re
import string
import sys
from pathlib import Path
from typing import Any

import torch
from torch._export.serde.schema import ScalarType
from torch._export.serde.serialize import deserialize_scalar_type

from models.shape_expressions import check_expression, expressions
from models.strict_zip import NotAZip, ZipEntry, ZipError, read_zip, write_zip
from streams.errors import ModelLoadError

WEIGHTS_CONFIG = "data/weights/{}_weights_config.json"
CONSTANTS_CONFIG = "data/constants/{}_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/{}.pt"
LEGACY_FILES = ("data/weights/{}.pt", "data/constants/{}.pt")
NATIVE_CODE_DIR = "data/aotinductor/"
MODELS_DIR = "models/"
# Entries torch.export.save writes beside the programs: format markers, no code.
ARCHIVE_METADATA = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
# The most a JSON entry may hold. A program's JSON (graph and signature, not weights) grows with
# the graph: measured with torch 2.15, 0.87 MB for a 12-layer transformer encoder, 3.4 MB for a
# 48-layer one, 2.9 MB for 32 Llama-style decoder layers (so about 7 MB for 80). Parsing JSON
# costs more memory than its bytes, here and again in torch: about 5 times for a real program,
# about 25 times for the worst case (nothing but empty objects), so an entry at this limit may
# cost some 400 MiB while it is parsed, whatever the file's size (torch.export.save stores
# entries, but a deflated one of 16 MiB fits in a file of 20 KB).
MAX_JSON_BYTES = 16 << 20
# All deflated entries together (the weights of an archive re-zipped with compression among
# them): what they inflate to is held in memory while torch loads.
MAX_INFLATED_BYTES = 1 << 30
# torch lists an archive's names through a buffer of 512 bytes (miniz's MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE):
# a longer name reaches it cut short, and could name another program than the one checked.
MAX_NAME_BYTES = 511
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def reason(exc: BaseException) -> str:
    """An exception as one short line: torch's messages run to pages (a SpecViolationError prints
    the graph, a refused ``weights_only`` load two paragraphs of advice before the cause)."""
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    cause = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    return f"{type(exc).__name__}: {cause[:300]}" if cause else type(exc).__name__


def check_export_archive(data: bytes, path: Path) -> list[ZipEntry]:
    """The archive's entries, checked; ``ModelLoadError`` naming the entry unless ``data`` is a
    plainly laid out zip holding only plain tensors and shapes. Hand torch ``repack`` of them."""
    try:
        checked = read_zip(data, _size_limit, MAX_INFLATED_BYTES)
    except NotAZip as exc:
        raise ModelLoadError(f"exported program {path} is not a torch.export archive (not a zip file: {exc})") from None
    except ZipError as exc:
        raise ModelLoadError(f"refusing exported program {path}: {exc}") from None
    names, entries = _entries(checked, path)

    def refuse(entry: str, why: str) -> ModelLoadError:
        return ModelLoadError(f"refusing exported program {path}: {entry} {why}")

    native = sorted(name for name in names if _fold(name).startswith(NATIVE_CODE_DIR))
    if native:
        raise refuse(native[0], "is AOTInductor native code, which torch would load into the process")
    # torch takes every entry whose name starts with models/ (case-sensitive) for a program, named
    # by cutting 7 characters off the front and 5 off the end, then reads that name's weights,
    # constants and sample inputs: each must be one this check reads too.
    programs = [name for name in names if name.startswith(MODELS_DIR)]
    stray = sorted(name for name in programs if not _is_model(name))
    if stray:
        raise refuse(stray[0], f"is not {MODELS_DIR}NAME.json, yet torch would load it as a program")
    if not programs:
        raise ModelLoadError(f"exported program {path} is not a torch.export archive: it has no {MODELS_DIR}*.json")
    allowed = {_fold(name) for name in ARCHIVE_METADATA}
    for program in programs:
        model = program[len(MODELS_DIR) : -len(".json")]
        for legacy in (f.format(model) for f in LEGACY_FILES):
            if _fold(legacy) in entries:
                raise refuse(legacy, "is a legacy pickled file, which torch may unpickle with weights_only=False")
        for config_name, prefix in ((WEIGHTS_CONFIG, "weight_"), (CONSTANTS_CONFIG, "tensor_")):
            name = config_name.format(model)
            if name not in names:  # torch looks for it in its list of names, spelled exactly so
                raise refuse(name, "is missing: only archives written by torch.export.save (torch>=2.6) are checked")
            config = _json(entries[_fold(name)], name, refuse)
            payloads = _check_payloads(config, name, prefix, refuse)
            folder = name.rsplit("/", 1)[0]
            _check_extents(config["config"], name, lambda p, f=folder: entries.get(_fold(f"{f}/{p}")), refuse)
            allowed |= {_fold(name), *(_fold(f"{folder}/{payload}") for payload in payloads)}
        sample = SAMPLE_INPUTS.format(model)
        allowed |= {_fold(sample), _fold(program)}
        if _fold(sample) in entries:
            try:
                torch.load(io.BytesIO(entries[_fold(sample)].data), map_location="cpu", weights_only=True)
            except Exception as exc:  # Broad on purpose: whatever the safe loader rejects, torch would unpickle
                raise refuse(sample, f"is not plain tensors (torch would unpickle it): {reason(exc)}") from exc
        for expr, hint in expressions(_json(entries[_fold(program)], program, refuse)):
            check_expression(expr, hint, lambda why, n=program: refuse(n, why))
    unknown = [name for name in names if _fold(name) not in allowed and not name.endswith("/")]
    if unknown:
        # Only what torch.export.save writes for plain tensors: anything else is something torch
        # may read in a way this check does not know.
        raise refuse(unknown[0], "is not an entry torch.export.save writes for plain tensors")
    return checked


def repack(entries: list[ZipEntry]) -> bytes:
    """A fresh archive of the checked entries, for torch: whatever two views the original file
    offered two zip readers, this one holds only what was checked."""
    return write_zip(entries)


def _size_limit(name: str) -> int:
    # JSON is parsed whole (here and by torch); tensors stored raw are already in memory.
    return MAX_JSON_BYTES if name.endswith(".json") else sys.maxsize


def _entries(checked: list[ZipEntry], path: Path) -> tuple[list[str], dict[str, ZipEntry]]:
    """The names torch lists (under the archive's root, spelled as written) and the entries torch
    finds by name (keyed by the name folded as torch's zip reader folds it).

    torch takes the root from the first entry and lists only the entries under it, spelled exactly
    so, through a 512-byte buffer; it finds a record by its name folded in ASCII only (miniz's
    ``MZ_TOLOWER``). Python's ``str.lower`` folds other letters too, some by context (``Σ``), so
    names outside printable ASCII could find one entry here and another there: they are refused,
    as are names torch would cut short and two names that fold alike."""
    if not checked or "/" not in checked[0].name:
        raise ModelLoadError(f"exported program {path} is not a torch.export archive (no root folder)")
    root = checked[0].name.split("/", 1)[0] + "/"
    names: list[str] = []
    entries: dict[str, ZipEntry] = {}
    for entry in checked:
        if not _printable_ascii(entry.name):
            raise ModelLoadError(
                f"refusing exported program {path}: the entry {entry.name!a} is not named in printable ASCII "
                "(torch's zip reader folds the case of ASCII letters only)"
            )
        if len(entry.name) > MAX_NAME_BYTES:
            raise ModelLoadError(
                f"refusing exported program {path}: the entry {entry.name[:60]}... is longer than the "
                f"{MAX_NAME_BYTES} bytes torch's zip reader lists whole"
            )
        if not entry.name.startswith(root):
            raise ModelLoadError(f"refusing exported program {path}: {entry.name} lies outside its root {root}")
        name = entry.name[len(root) :]
        if _fold(name) in entries:
            raise ModelLoadError(f"refusing exported program {path}: {entry.name} appears twice")
        names.append(name)
        entries[_fold(name)] = entry
    return names, entries


def _printable_ascii(name: str) -> bool:
    return all(" " <= char <= "~" for char in name)


def _fold(name: str) -> str:
    """``name`` as torch's zip reader compares names: ASCII letters lower-cased, nothing else."""
    return name.translate(_ASCII_LOWER)


def _is_model(name: str) -> bool:
    return name.startswith(MODELS_DIR) and name.endswith(".json") and "/" not in name[len(MODELS_DIR) :]


def _json(entry: ZipEntry, name: str, refuse: Any) -> Any:
    try:
        return json.loads(bytes(entry.data).decode("utf-8"))  # as torch reads it: UTF-8, whatever a BOM says
    except (ValueError, RecursionError) as exc:
        raise refuse(name, f"is not valid JSON: {reason(exc)}") from exc


def _check_payloads(config: Any, name: str, prefix: str, refuse: Any) -> list[str]:
    """The raw tensor files ``config`` names; refuses anything declared otherwise."""
    payloads = config.get("config") if isinstance(config, dict) else None
    if not isinstance(payloads, dict):
        raise refuse(name, "has no 'config' table")
    names: list[str] = []
    for fqn, meta in payloads.items():
        if not _printable_ascii(fqn):
            raise refuse(name, f"declares {fqn!a}, a name not in printable ASCII")
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            # Anything but an explicit false (missing, true, 1) is what torch treats as a pickle.
            raise refuse(name, f"declares {fqn!r} as pickled (use_pickle), which torch would unpickle")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not path_name.startswith(prefix) or meta.get("tensor_meta") is None:
            raise refuse(name, f"declares {fqn!r} as {path_name!r}, not a raw tensor ({prefix}N with tensor_meta)")
        if not _printable_ascii(path_name):
            raise refuse(name, f"declares {fqn!r} in {path_name!a}, a name not in printable ASCII")
        if "/" in path_name:
            raise refuse(name, f"declares {fqn!r} in {path_name!r}, outside its folder")
        names.append(path_name)  # torch reads os.path.join(folder, path_name): folder + "/" + path_name
    return names


def _check_extents(payloads: dict[str, Any], name: str, payload: Any, refuse: Any) -> None:
    """Each raw payload holds the bytes every tensor viewing it reaches, as torch reads them
    (``_build_file_map``): the first tensor naming a payload gives its dtype; a payload of bytes
    becomes a storage of that many elements, which each tensor views with ``as_strided``; an
    empty payload becomes ``torch.zeros`` of the first tensor's sizes, so it may only be empty.
    A payload may hold more than its tensors reach: torch.export.save writes a view's whole storage."""
    storages: dict[str, tuple[int, torch.dtype]] = {}  # path_name: its bytes, its dtype
    for fqn, meta in payloads.items():
        path_name = meta["path_name"]
        try:
            sizes, strides, offset, dtype = _layout(meta["tensor_meta"])
        except ValueError as exc:
            raise refuse(name, f"declares {fqn!r} with a malformed tensor_meta ({exc})") from None
        entry = payload(path_name)
        if entry is None:
            raise refuse(name, f"declares {fqn!r} in {path_name!r}, which the archive does not hold")
        nbytes, dtype = storages.setdefault(path_name, (len(entry.data), dtype))
        # as_strided's bound (computeStorageNbytes): one past the last element reached.
        reach = 0 if 0 in sizes else offset + 1 + sum((n - 1) * step for n, step in zip(sizes, strides, strict=True))
        if reach > nbytes // dtype.itemsize:
            shape = "x".join(map(str, sizes)) or "scalar"
            raise refuse(
                name,
                f"declares {fqn!r} as a {shape} {dtype} tensor reaching {reach * dtype.itemsize} bytes into "
                f"{path_name!r}, which holds {nbytes}",
            )


def _layout(meta: Any) -> tuple[list[int], list[int], int, torch.dtype]:
    """Sizes, strides, storage offset and dtype of a ``tensor_meta``, or ``ValueError`` saying why not."""

    def number(value: Any) -> int:
        if isinstance(value, dict) and list(value) == ["as_int"]:
            value = value["as_int"]
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        raise ValueError("sizes, strides and storage offset are not all {'as_int': n} with n >= 0")

    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), list) for k in ("sizes", "strides")):
        raise ValueError("no lists of sizes and strides")
    sizes, strides = [number(v) for v in meta["sizes"]], [number(v) for v in meta["strides"]]
    offset = number(meta.get("storage_offset"))
    if len(sizes) != len(strides):
        raise ValueError(f"{len(sizes)} sizes but {len(strides)} strides")
    try:
        if type(meta.get("dtype")) is not int:  # a bool or a float is no dtype either
            raise TypeError
        return sizes, strides, offset, deserialize_scalar_type(ScalarType(meta["dtype"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"dtype {meta.get('dtype')!r:.20} is not one torch knows") from None
