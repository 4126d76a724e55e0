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
  which evaluates the string as Python;
- ``data/aotinductor/`` holds compiled native libraries that are loaded into the process.

So an archive passes only when it is made of what ``torch.export.save`` writes for plain
tensors: raw weight and constant bytes, sample inputs the safe loader accepts, and shape
expressions in the grammar sympy's own ``srepr`` prints. Anything else is refused with the
entry that made the decision.

The zip itself is read strictly (``models.strict_zip``): a file can show Python's ``zipfile``
one central directory and torch's miniz reader another, so reading it "the same way torch
does" is not enough. ``check_export_archive`` returns the entries it checked, and the caller
hands torch a fresh archive of exactly those (``repack``), never the file's own bytes.
Names are read as torch reads them: the programs are the names that start with ``models/``,
spelled so; every other record is found by its name folded in ASCII only, as miniz does. A
name outside printable ASCII is refused, since Python and miniz fold such names differently.
Deflated entries are inflated in bounded steps: programs and configs up to
``MAX_JSON_BYTES`` each, all deflated entries together up to ``MAX_INFLATED_BYTES``.
"""

from __future__ import annotations

import io
import json
import re
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

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
# What a deflated entry may inflate to: a program's JSON (graph and signature, not weights) is
# megabytes for large models; torch.export.save stores every entry uncompressed, so deflated
# ones come from re-zipping, and a deflate bomb costs at most this much memory before refusal.
MAX_JSON_BYTES = 256 << 20
MAX_INFLATED_BYTES = 1 << 30
# torch lists an archive's names through a buffer of 512 bytes (miniz's MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE):
# a longer name reaches it cut short, and could name another program than the one checked.
MAX_NAME_BYTES = 511
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

# What sympy's srepr prints for the shapes torch.export records: constructors, their keyword
# assumptions, and the functions torch's deserializer registers. No attribute access, no
# subscripts, no builtins: nothing in this grammar can reach eval, open or __import__.
# fmt: off
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor", "ceiling",
    "sqrt", "Piecewise", "ExprCondPair", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Tuple", "true", "false", "BooleanTrue", "BooleanFalse",
    "oo", "zoo", "nan", "int_oo", "Infinity", "NegativeInfinity", "Half", "One", "Zero", "NegativeOne", "FloorDiv",
    "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift",
    "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "positive", "negative", "nonnegative",
    "nonpositive", "integer", "real", "finite", "infinite", "zero", "nonzero", "even", "odd", "rational",
    "commutative", "precision", "evaluate", "True", "False", "None"
})
# fmt: on
_TOKEN = re.compile(
    r"\s+"
    r"|'[A-Za-z0-9_.+\-]*'"  # a symbol's name or a Float's digits, as srepr quotes them
    r"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|[-+*/%(),=<>!]"
)
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
            payloads = _check_payloads(_json(entries[_fold(name)], name, refuse), name, prefix, refuse)
            folder = name.rsplit("/", 1)[0]
            allowed |= {_fold(name), *(_fold(f"{folder}/{payload}") for payload in payloads)}
        sample = SAMPLE_INPUTS.format(model)
        allowed |= {_fold(sample), _fold(program)}
        if _fold(sample) in entries:
            try:
                torch.load(io.BytesIO(entries[_fold(sample)].data), map_location="cpu", weights_only=True)
            except Exception as exc:  # Broad on purpose: whatever the safe loader rejects, torch would unpickle
                raise refuse(sample, f"is not plain tensors (torch would unpickle it): {reason(exc)}") from exc
        for expr in _expressions(_json(entries[_fold(program)], program, refuse)):
            _check_expression(expr, lambda why, n=program: refuse(n, why))
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


def _expressions(node: Any) -> Iterator[Any]:
    """Every ``expr_str`` value in the serialized program, however deep."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "expr_str":
                    yield value
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _check_expression(expr: Any, refuse: Any) -> None:
    if not isinstance(expr, str):
        raise refuse(f"holds a shape expression that is not a string: {expr!r:.80}")
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        name = match and match.group("name")
        if match is None or (name and name not in _SYMPY_NAMES):
            shown = name or expr[position : position + 20]
            raise refuse(f"holds a shape expression sympy would evaluate as Python ({shown!r} in {expr:.80})")
        position = match.end()
