"""Model files crafted to run code on load are refused before torch reads them.

Each hostile archive is built here from a real ``torch.export.save`` output, rewritten the
way an attacker would. Where torch itself would run the payload, the test proves it (a
plain ``torch.export.load`` of the same file writes the marker), so a refusal that passes
is a refusal of something live, not of a file that was harmless anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import struct
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from app.config import load_config
from models.export_archive import check_export_archive
from models.loading import ModelSpec, load_model
from streams.errors import CommandLineError, ConfigError, ModelLoadError
from tests.crafted_archives import (
    Tiny,
    WritesMarker,
    case_folded,
    export_tiny,
    pickled_weights,
    torch_saved,
    two_directories,
)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return export_tiny(tmp_path / "tiny.pt2")


def rewrite(src: Path, dst: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None) -> Path:
    """Copy a zip, replacing entries (named without the root folder) and adding others."""
    replace, add = replace or {}, dict(add or {})
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        root = old.namelist()[0].split("/", 1)[0]
        for info in old.infolist():
            name = info.filename.split("/", 1)[1]
            new.writestr(info, replace.get(name, old.read(info)))
        for name, data in add.items():
            new.writestr(f"{root}/{name}" if not name.startswith("/") else name[1:], data)
    return dst


def read(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(f"{z.namelist()[0].split('/', 1)[0]}/{name}")


def edit_json(path: Path, name: str, change) -> bytes:
    data = json.loads(read(path, name))
    change(data)
    return json.dumps(data).encode()


def plain_torch_runs_it(path: Path, marker: Path) -> bool:
    """Whether a plain ``torch.export.load`` of ``path`` runs the payload (creates ``marker``)."""
    assert not marker.exists()
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        torch.export.load(str(path))
    return marker.exists()


def refused(path: Path, says: str) -> str:
    with pytest.raises(ModelLoadError, match=says) as caught:
        load_model(ModelSpec(exported=path))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, "one line, naming the file"
    return message


def test_a_clean_archive_loads_and_computes(archive):
    module = load_model(ModelSpec(exported=archive)).module
    torch.manual_seed(0)
    original, x = Tiny(), torch.randn(5, 3)
    assert torch.allclose(module(x), original(x)), "same weights, constants and batch size as exported"


def test_an_archive_with_pickled_weights_is_refused_before_any_code_runs(archive, tmp_path):
    marker = tmp_path / "ran"
    config = "data/weights/model_weights_config.json"

    def mark_pickled(data):
        meta = data["config"]["linear.weight"]
        meta["use_pickle"] = True
        meta["tensor_meta"] = None

    evil = rewrite(
        archive,
        tmp_path / "evil.pt2",
        replace={
            config: edit_json(archive, config, mark_pickled),
            "data/weights/weight_0": torch_saved(WritesMarker(marker)),
        },
    )
    message = refused(evil, "model_weights_config.json declares 'linear.weight' as pickled")
    assert message.startswith(f"refusing exported program {evil}: ")
    assert not marker.exists(), "no code from the file ran"
    assert plain_torch_runs_it(evil, marker), "the payload is live: plain torch.export.load runs it"


def test_a_zip_showing_torch_another_directory_is_refused_before_any_code_runs(archive, tmp_path):
    # Python's zipfile reads the directory that ends at the end record; torch's reader (miniz)
    # the one at the record's stored offset, here hidden in the record's comment, naming pickled weights.
    marker = tmp_path / "ran"
    evil = two_directories(archive, tmp_path / "evil.pt2", pickled_weights(archive, marker))
    with zipfile.ZipFile(evil) as z:
        assert z.testzip() is None, "zipfile reads a sound archive"
        config = json.loads(z.read(z.namelist()[0].split("/", 1)[0] + "/data/weights/model_weights_config.json"))
        assert not any(meta["use_pickle"] for meta in config["config"].values()), "and nothing pickled in it"
    data = evil.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    size, torch_reads = struct.unpack_from("<2L", data, end + 12)
    assert refused(evil, "zip readers would disagree on its entries") == (
        f"refusing exported program {evil}: its end record places the {size}-byte central directory at byte "
        f"{torch_reads}, but the directory before the end records starts at byte {end - size}: zip readers would "
        "disagree on its entries (data prepended, or a second directory)"
    )
    assert not marker.exists(), "no code from the file ran"
    assert plain_torch_runs_it(evil, marker), "the payload is live: plain torch.export.load runs it"


def test_a_users_export_with_a_dynamic_batch_loads_from_the_repacked_entries(tmp_path):
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    torch.manual_seed(1)
    model, path = M(), tmp_path / "user.pt2"
    ep = torch.export.export(model, (torch.zeros(8, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, path)
    loaded = load_model(ModelSpec(exported=path))
    assert (loaded.name, loaded.version) == ("user", "1")
    x = torch.randn(3, 32)  # another batch size than exported with
    assert torch.allclose(loaded.module(x), model(x))


@pytest.mark.parametrize(
    ("path_name", "payload", "live"),
    [
        ("tensor_0", "torch", True),  # a tensor constant marked use_pickle: torch.load(weights_only=False)
        ("opaque_obj_0", "pickle", True),  # an opaque object: pickle.loads
        ("custom_obj_0", "pickle", False),  # a torchbind object: torch's own unpickler
    ],
)
def test_pickled_or_opaque_constants_are_refused(archive, tmp_path, path_name, payload, live):
    marker = tmp_path / "ran"
    config = "data/constants/model_constants_config.json"

    def mark(data):
        meta = data["config"]["lifted_tensor_0"]
        meta.update(path_name=path_name, use_pickle=True, tensor_meta=None)

    body = torch_saved(WritesMarker(marker)) if payload == "torch" else pickle.dumps(WritesMarker(marker))
    changes = {config: edit_json(archive, config, mark)}
    if path_name == "tensor_0":
        evil = rewrite(archive, tmp_path / "evil.pt2", replace={**changes, "data/constants/tensor_0": body})
    else:
        evil = rewrite(archive, tmp_path / "evil.pt2", replace=changes, add={f"data/constants/{path_name}": body})
    refused(evil, "model_constants_config.json declares 'lifted_tensor_0' as pickled")
    assert not marker.exists()
    if live:
        assert plain_torch_runs_it(evil, marker)


def test_a_missing_or_truthy_use_pickle_counts_as_pickled(archive, tmp_path):
    config = "data/weights/model_weights_config.json"
    for i, value in enumerate((1, "false", None)):
        evil = rewrite(
            archive,
            tmp_path / f"evil{i}.pt2",
            replace={
                config: edit_json(archive, config, lambda d, v=value: d["config"]["linear.weight"].update(use_pickle=v))
            },
        )
        refused(evil, "as pickled")


def test_a_shape_expression_that_is_python_is_refused(archive, tmp_path):
    # torch parses each symbolic shape with sympy.sympify, which evaluates the string as Python.
    marker = tmp_path / "ran"
    model = read(archive, "models/model.json").decode()
    symbol = re.search(r"Symbol\('s\d+'[^)]*\)", model)
    assert symbol, "the dynamic batch dimension is recorded as a symbol"
    code = f"__import__('os').mkdir({str(marker)!r}) or {symbol.group(0)}"
    evil = rewrite(
        archive, tmp_path / "evil.pt2", replace={"models/model.json": model.replace(symbol.group(0), code).encode()}
    )
    refused(evil, r"models/model.json holds a shape expression sympy would evaluate as Python \('__import__'")
    assert not marker.exists()
    assert plain_torch_runs_it(evil, marker)


def with_expression(archive: Path, dst: Path, expression: str, hint: int | None = None) -> Path:
    """``archive`` with its first shape expression replaced (and its hint, if given)."""
    model = json.loads(read(archive, "models/model.json"))
    stack = [model]
    while stack:
        item = stack.pop()
        if isinstance(item, dict) and "expr_str" in item:
            item["expr_str"] = expression
            if hint is not None:
                item["hint"] = {"as_int": hint}
            return rewrite(archive, dst, replace={"models/model.json": json.dumps(model).encode()})
        stack.extend(item.values() if isinstance(item, dict) else item if isinstance(item, list) else [])
    raise AssertionError("no shape expression in the program")


@pytest.mark.timeout(60)  # a regression would freeze in sympify, holding the GIL: fail, do not hang
def test_a_shape_expression_that_would_freeze_the_process_is_refused_at_once(archive, tmp_path):
    # sympify computes 7 ** 99999999999 at once, in C, holding the GIL: not even SIGTERM stops it.
    evil = with_expression(archive, tmp_path / "pow.pt2", "Pow(Integer(7), Integer(99999999999))")
    expected = (
        f"refusing exported program {evil}: models/model.json holds a shape expression too costly for sympy "
        "to evaluate (Pow to an exponent other than a number up to 16 in 'Pow(Integer(7), Integer(99999999999))')"
    )
    # The check alone first: were it to pass the archive, load_model would hand it to sympify and freeze.
    with pytest.raises(ModelLoadError) as caught:
        check_export_archive(evil.read_bytes(), evil)
    assert str(caught.value) == expected
    started = time.monotonic()
    assert refused(evil, "too costly") == expected
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("expression", "hint", "says"),
    [
        ("Integer(7)**Integer(99999999999)", None, "sympy would evaluate as Python \\('\\*\\*Integer"),
        ("LShift(Integer(1), Integer(99999999999))", None, "sympy would evaluate as Python \\('LShift'"),
        ("RShift(Integer(1), Integer(-99999999999))", None, "sympy would evaluate as Python \\('RShift'"),
        ("Integer(9)^Integer(99999999999)", None, "sympy would evaluate as Python \\('\\^Integer"),
        ("Mul(Integer(99999), Integer(99999))!", None, "sympy would evaluate as Python \\('!'"),  # factorial: freezes
        ("Float('1.5', precision=99999999999)", None, "too costly .*a precision other than a number up to 1024"),
        ("Pow(" * 5 + "Integer(99999)" + ", Integer(16))" * 5, None, "too costly .*Pow of a power"),
        ("PowByNatural(Integer(7), Mul(Integer(99999), Integer(99999)))", None, "too costly .*PowByNatural to an"),
        ("Pow(Integer(7), Symbol('s77', integer=True))", None, "too costly .*Pow to an exponent"),
        (f"Integer({'9' * 21})", None, "too costly .*an integer of 21 digits, over 20"),
        ("TruncToInt(Float('1e99999999999', precision=53))", None, "too costly .*the string '1e99999999999'"),
        ("Symbol('s77', integer=Pow(Integer(7), Integer(99)))", None, "too costly .*integer set to something"),
        ("Abs(" * 40 + "Integer(1)" + ")" * 40, None, "too costly .*calls nested over 32 deep"),
        ("Add(" + "Integer(1), " * 400 + "Integer(1))", None, "too costly .*4815 characters, over 4096"),
        ("Symbol('s77', integer=True)", 10**30, "too costly .*a hint of over 20 digits"),
        ("Symbol('s77',\ninteger=True)", None, "sympy would evaluate as Python \\('\\\\ninteger"),
    ],
)
def test_shape_expressions_that_are_not_srepr_or_too_costly_are_refused(archive, tmp_path, expression, hint, says):
    evil = with_expression(archive, tmp_path / "evil.pt2", expression, hint)
    with pytest.raises(ModelLoadError, match=f"models/model.json holds a shape expression {says}") as caught:
        check_export_archive(evil.read_bytes(), evil)  # the check only: it never calls sympify
    assert "\n" not in str(caught.value)


class TwoDynamic(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # FloorDiv, Add and Mul of two symbols
        return x.sum(2).reshape(x.shape[0] * x.shape[1])[: x.shape[0] // 2 + 1].sum().expand(x.shape[0], 1)


class Doubled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # shapes 2 * batch and 4 * batch
        return (x.reshape(-1) * 2).reshape(x.shape[0] * 2, -1)[: x.shape[0]].sum(1, keepdim=True)


class Outer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # seq * seq: Pow(Symbol, Integer(2))
        return (x.unsqueeze(2) * x.unsqueeze(1)).reshape(x.shape[0], x.shape[1] * x.shape[1]).sum(1, keepdim=True)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[:, 0, :1] * (x.shape[1] / 3)  # and a float of a size: IntTrueDiv


@pytest.mark.parametrize(
    ("model", "example", "dims", "other"),
    [
        (TwoDynamic, (4, 6, 3), ("batch", "seq"), (5, 7, 3)),
        (Doubled, (4, 6), ("batch",), (3, 6)),
        (Outer, (4, 6), ("batch", "seq"), (3, 5)),
        (Attention, (4, 6, 8), ("batch", "seq"), (3, 5, 8)),
    ],
)
def test_exports_whose_shapes_are_expressions_load_and_compute(tmp_path, model, example, dims, other):
    torch.manual_seed(0)
    module, path = model().eval(), tmp_path / "m.pt2"
    shapes = {i: torch.export.Dim(name, max=64) for i, name in enumerate(dims)}
    torch.export.save(torch.export.export(module, (torch.zeros(example),), dynamic_shapes=(shapes,)), path)
    loaded = load_model(ModelSpec(exported=path)).module
    x = torch.randn(other)
    assert torch.allclose(loaded(x), module(x), atol=1e-6)


def test_sample_inputs_that_need_unpickling_are_refused(archive, tmp_path):
    # torch.load of the sample inputs falls back to weights_only=False when the safe loader refuses.
    marker = tmp_path / "ran"
    evil = rewrite(
        archive,
        tmp_path / "evil.pt2",
        replace={"data/sample_inputs/model.pt": torch_saved(((WritesMarker(marker),), {}))},
    )
    refused(evil, r"data/sample_inputs/model.pt is not plain tensors")
    assert not marker.exists()
    assert plain_torch_runs_it(evil, marker)


@pytest.mark.parametrize(
    ("add", "says"),
    [
        ({"data/aotinductor/model/model.so": b"\x7fELF"}, "data/aotinductor/model/model.so is AOTInductor native code"),
        ({"data/weights/model.pt": b"PK"}, "data/weights/model.pt is a legacy pickled file"),
        ({"/version": b"0"}, "version lies outside its root"),
        ({"models/model.json": b"{}"}, "appears twice"),
        ({"MODELS/Model.json": b"{}"}, "appears twice"),  # torch's zip reader matches names case-insensitively
    ],
)
def test_entries_torch_would_load_as_code_or_read_differently_are_refused(archive, tmp_path, add, says):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name we mean to write
        evil = rewrite(archive, tmp_path / "evil.pt2", add=add)
    refused(evil, says)


@pytest.mark.parametrize("program", ["models/x/y.json", "models/evil.txt"])
def test_a_second_program_hidden_under_models_is_refused_before_torch_reads_its_pickles(archive, tmp_path, program):
    # torch loads every entry under models/ as a program (named by cutting 7 characters off the
    # front and 5 off the end), then reads that name's weights config: pickled weights there ran.
    marker = tmp_path / "ran"
    name = program[len("models/") : -len(".json")]
    weights = f"data/weights/{name}_weights_config.json"

    def pickled(data):
        for meta in data["config"].values():
            meta["use_pickle"], meta["tensor_meta"], meta["path_name"] = True, None, "weight_evil"

    evil = rewrite(
        archive,
        tmp_path / "evil.pt2",
        add={
            "data/weights/weight_evil": torch_saved(WritesMarker(marker)),
            program: read(archive, "models/model.json"),
            weights: edit_json(archive, "data/weights/model_weights_config.json", pickled),
            f"data/constants/{name}_constants_config.json": read(archive, "data/constants/model_constants_config.json"),
            f"data/sample_inputs/{name}.pt": read(archive, "data/sample_inputs/model.pt"),
        },
    )
    refused(evil, f"{program} is not models/NAME.json, yet torch would load it as a program")
    assert not marker.exists(), "no code from the file ran"
    assert plain_torch_runs_it(evil, marker), "the payload is live: plain torch.export.load runs it"


def test_names_python_and_torch_fold_differently_are_refused_before_any_code_runs(archive, tmp_path):
    # Python lower-cases a capital sigma to a small or a final sigma by context; torch's zip reader
    # folds ASCII only. A checker folding like Python reads a benign weights config; torch reads
    # one that unpickles.
    marker = tmp_path / "ran"
    evil = case_folded(archive, tmp_path / "evil.pt2", marker)
    assert refused(evil, "not named in printable ASCII") == (
        f"refusing exported program {evil}: the entry 'tiny/models/weight_A\\u03a3.json' is not named in "
        "printable ASCII (torch's zip reader folds the case of ASCII letters only)"
    )
    assert not marker.exists(), "no code from the file ran"
    assert plain_torch_runs_it(evil, marker), "the payload is live: plain torch.export.load runs it"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ("path_name", r"declares 'linear.weight' in 'weight_\\xe9', a name not in printable ASCII"),
        ("fqn", r"declares 'linear.w\\xe9ight', a name not in printable ASCII"),
    ],
)
def test_names_in_a_config_that_are_not_ascii_are_refused(archive, tmp_path, change, says):
    config = "data/weights/model_weights_config.json"

    def rename(data):
        if change == "path_name":
            data["config"]["linear.weight"]["path_name"] = "weight_\u00e9"
        else:
            data["config"]["linear.w\u00e9ight"] = data["config"].pop("linear.weight")

    evil = rewrite(archive, tmp_path / "evil.pt2", replace={config: edit_json(archive, config, rename)})
    refused(evil, f"{config} {says}")


def test_names_torch_would_truncate_or_read_under_another_root_are_refused(archive, tmp_path):
    # torch lists entries through a 512-byte buffer: a longer name reaches it cut short.
    long_name = "data/" + "x" * 520
    refused(rewrite(archive, tmp_path / "long.pt2", add={long_name: b""}), "is longer than the 511 bytes")
    # torch lists entries under the root spelled exactly as the first entry spells it.
    refused(rewrite(archive, tmp_path / "case.pt2", add={"/TINY/extra": b""}), "TINY/extra lies outside its root tiny/")


@pytest.mark.parametrize(
    ("sizes", "strides", "payload", "says"),
    [
        # An empty payload: torch makes torch.zeros(sizes), 64 MiB here out of nothing.
        (
            [1 << 24],
            [1],
            b"",
            "as a 16777216 torch.float32 tensor reaching 67108864 bytes into 'weight_0', which holds 0",
        ),
        # A payload of 3 floats viewed as 300: torch would view memory past it, were as_strided not to check.
        (
            [1, 300],
            [300, 1],
            None,
            "as a 1x300 torch.float32 tensor reaching 1200 bytes into 'weight_0', which holds 12",
        ),
        ([1, 3], [3, 1], b"\0" * 11, "as a 1x3 torch.float32 tensor reaching 12 bytes into 'weight_0', which holds 11"),
    ],
)
def test_a_raw_payload_shorter_than_its_tensors_is_refused(archive, tmp_path, sizes, strides, payload, says):
    config = "data/weights/model_weights_config.json"
    assert json.loads(read(archive, config))["config"]["linear.weight"]["path_name"] == "weight_0"

    def resize(data):
        meta = data["config"]["linear.weight"]["tensor_meta"]
        meta["sizes"], meta["strides"] = [{"as_int": n} for n in sizes], [{"as_int": n} for n in strides]

    replace = {config: edit_json(archive, config, resize)}
    if payload is not None:
        replace["data/weights/weight_0"] = payload
    evil = rewrite(archive, tmp_path / "evil.pt2", replace=replace)
    refused(evil, f"{config} declares 'linear.weight' {re.escape(says)}")
    if payload == b"":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weight = torch.export.load(str(evil)).state_dict["linear.weight"]
        assert weight.numel() == 1 << 24, "plain torch.export.load makes the tensor the file does not hold"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        # torch makes torch.zeros(sizes) before it finds the strides do not fit: 64 MiB, then an error.
        ({"sizes": [{"as_int": 1 << 24}]}, "(1 sizes but 2 strides)"),
        ({"sizes": [{"as_int": -1}, {"as_int": 3}]}, "(sizes, strides and storage offset are not all"),
        ({"storage_offset": {"as_expr": "s0"}}, "(sizes, strides and storage offset are not all"),
        ({"dtype": 99}, "(dtype 99 is not one torch knows)"),
    ],
)
def test_a_raw_payload_whose_tensor_meta_is_malformed_is_refused(archive, tmp_path, change, says):
    config = "data/weights/model_weights_config.json"
    edited = edit_json(archive, config, lambda data: data["config"]["linear.weight"]["tensor_meta"].update(change))
    evil = rewrite(archive, tmp_path / "evil.pt2", replace={config: edited, "data/weights/weight_0": b""})
    refused(evil, f"{config} declares 'linear.weight' with a malformed tensor_meta {re.escape(says)}")


def test_payloads_that_hold_more_than_their_views_reach_load(tmp_path):
    # torch.export.save writes a view's whole storage: a slice's, a strided view's, a transpose's.
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            storage = torch.arange(10.0)
            self.register_buffer("middle", storage[2:5])
            self.register_buffer("every_other", storage[::2])
            self.transposed = nn.Parameter(torch.randn(4, 3).t())
            self.empty = nn.Parameter(torch.empty(0, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.transposed + self.middle.sum() + self.every_other.sum() + self.empty.sum()

    torch.manual_seed(0)
    module, path = Views(), tmp_path / "views.pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns it found no tensor covering the storage
        torch.export.save(torch.export.export(module, (torch.zeros(2, 3),)), path)
    x = torch.randn(2, 3)
    assert torch.allclose(load_model(ModelSpec(exported=path)).module(x), module(x))


def test_an_entry_torch_export_save_does_not_write_is_refused(archive, tmp_path):
    evil = rewrite(archive, tmp_path / "evil.pt2", add={"data/extra/payload.bin": b"anything"})
    refused(evil, "data/extra/payload.bin is not an entry torch.export.save writes")


def test_whatever_torch_raises_becomes_one_line_naming_the_file(archive, tmp_path):
    not_zip = tmp_path / "junk.pt2"
    not_zip.write_bytes(b"\x00" * 100)
    refused(not_zip, "is not a torch.export archive \\(not a zip file")
    # Passes the check (nothing pickled, no expressions) but is no program: torch raises deep inside.
    broken = rewrite(archive, tmp_path / "broken.pt2", replace={"models/model.json": b'{"graph_module": 1}'})
    refused(broken, "is not a loadable torch.export archive: ")
    # A call to something that is not a torch operator: torch's verifier raises SpecViolationError.
    model = read(archive, "models/model.json").replace(b'"torch.ops.aten.linear.default"', b'"torch.os.system"')
    calls_os = rewrite(archive, tmp_path / "calls_os.pt2", replace={"models/model.json": model})
    refused(
        calls_os, "is not a loadable torch.export archive: SpecViolationError: Operator '<built-in function system>'"
    )


def test_what_torch_raises_while_reading_is_named_and_logs_no_traceback(archive, tmp_path, capfd):
    # torch.export.load logs a 15-line traceback for a RuntimeError, retries its legacy format
    # with another zip reader, then raises "We ran into an error...", which hides the cause.
    no_sample = tmp_path / "no-sample.pt2"
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(no_sample, "w") as new:
        for info in old.infolist():
            if not info.filename.endswith("data/sample_inputs/model.pt"):
                new.writestr(info, old.read(info))
    capfd.readouterr()
    refused(
        no_sample,
        "is not a loadable torch.export archive: RuntimeError: PytorchStreamReader failed locating file "
        "data/sample_inputs/model.pt: file not found",
    )
    assert capfd.readouterr().err == "", "nothing logged: the one line says it all"


def test_an_archive_without_the_program_torch_export_load_returns_is_one_line(archive, tmp_path):
    renamed = tmp_path / "renamed.pt2"
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(renamed, "w") as new:
        for info in old.infolist():
            name = info.filename.replace("/model.", "/other.").replace("/model_", "/other_")
            new.writestr(name, old.read(info))
    assert refused(renamed, "no program") == (
        f"{renamed} is not a loadable torch.export archive: it holds no program named 'model' (only ['other'])"
    )


def test_torchscript_needs_an_opt_in_on_that_model(tmp_path):
    scripted = tmp_path / "m.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(nn.Linear(3, 1)), str(scripted))
    with pytest.raises(ModelLoadError, match=f"refusing TorchScript file {scripted}: .* trust_torchscript = true"):
        load_model(ModelSpec(torchscript=scripted))
    assert load_model(ModelSpec(torchscript=scripted, trust_torchscript=True)).module(torch.zeros(2, 3)).shape == (2, 1)
    garbage = tmp_path / "bad.ts"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=f"{garbage} is not a loadable TorchScript archive"):
        load_model(ModelSpec(torchscript=garbage, trust_torchscript=True))


def config_file(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(
        '[pipelines.p]\ninput_topics = ["in"]\noutput_topic = "out"\ndead_letter_topic = "dlq"\n'
        f"[pipelines.p.model]\n{model}\n"
        '[pipelines.p.features]\ninputs = [{ field = "features", shape = [32] }]\n'
    )
    return path


def test_the_config_opts_in_per_model_and_only_with_a_boolean(tmp_path):
    assert load_config(config_file(tmp_path, 'torchscript = "m.ts"')).pipeline("p").model.trust_torchscript is False
    trusted = load_config(config_file(tmp_path, 'torchscript = "m.ts"\ntrust_torchscript = true')).pipeline("p")
    assert trusted.model.trust_torchscript is True
    with pytest.raises(ConfigError, match=r"trust_torchscript.*true or false"):
        load_config(config_file(tmp_path, 'torchscript = "m.ts"\ntrust_torchscript = "yes"'))


def test_a_backfill_takes_a_torchscript_file_only_where_the_config_trusts_it(tmp_path):
    from app.commands.backfill import model_spec

    untrusted = load_config(config_file(tmp_path, 'demo = "fraud-mlp"')).pipeline("p")
    with pytest.raises(
        CommandLineError, match=r"only where the config trusts it: trust_torchscript = true in \[pipelines.p"
    ):
        model_spec("candidate.ts", untrusted)
    trusted = load_config(config_file(tmp_path, 'demo = "fraud-mlp"\ntrust_torchscript = true')).pipeline("p")
    assert model_spec("candidate.ts", trusted) == ModelSpec(torchscript=Path("candidate.ts"), trust_torchscript=True)


@pytest.mark.timeout(60)  # a regression would block in open(); fail instead of hanging the suite
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_model_path_that_is_not_a_regular_file_is_refused_without_opening_it(tmp_path, kind):
    path = tmp_path / "model.pt2"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    expected = "a FIFO" if kind == "fifo" else "a directory"
    for spec in (
        ModelSpec(exported=path),
        ModelSpec(torchscript=path, trust_torchscript=True),
        ModelSpec(module_class="models.demo:FraudMLP", state_dict=path),
    ):
        with pytest.raises(ModelLoadError, match=f"{path} is {expected}, not a regular file"):
            load_model(spec)
