"""Hostile ``torch.export`` archives, built the way an attacker would, for unit and integration tests.

The payload of each is a pickle that creates a marker folder: if the folder exists, code
from the file ran.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

EOCD = struct.Struct("<4s4H2LH")
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")


class WritesMarker:
    """Unpickling this creates the folder ``path``: proof that code from the file ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))  # leaves no open file behind, unlike open()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.register_buffer("offset", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.offset + torch.tensor([2.0])  # the tensor literal is a lifted constant


def export_tiny(path: Path) -> Path:
    """What ``torch.export.save`` writes for ``Tiny`` (seeded), with a dynamic batch dimension."""
    batch = torch.export.Dim("batch")
    torch.manual_seed(0)
    torch.export.save(torch.export.export(Tiny(), (torch.zeros(4, 3),), dynamic_shapes={"x": {0: batch}}), str(path))
    return path


def torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def root_of(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return z.namelist()[0].split("/", 1)[0]


def pickled_weights(clean: Path, marker: Path) -> dict[str, bytes]:
    """The weights config and weight that make torch unpickle ``WritesMarker(marker)``."""
    name = "data/weights/model_weights_config.json"
    with zipfile.ZipFile(clean) as z:
        config = json.loads(z.read(f"{root_of(clean)}/{name}"))
    meta = config["config"]["linear.weight"]
    meta["use_pickle"], meta["tensor_meta"] = True, None
    return {name: json.dumps(config).encode(), "data/weights/weight_0": torch_saved(WritesMarker(marker))}


def two_directories(clean: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """One file, two archives: Python's ``zipfile`` reads ``clean`` as it is; torch's reader
    (miniz, which trusts the end record's stored offset and count) reads ``clean`` with the
    entries in ``replace`` (named without the root folder) swapped for other bytes.

    Layout: every entry's local header and data (the clean ones, then the replacements), the
    directory ``zipfile`` reads, the end record, and in the end record's comment the directory
    torch reads. ``zipfile`` takes the directory that ends at the end record ("its size
    before the record") and shifts each entry by how far the stored offset is from it; miniz
    reads the directory at the stored offset.
    """
    root = root_of(clean)
    buffer = io.BytesIO()
    with zipfile.ZipFile(clean) as old, zipfile.ZipFile(buffer, "w") as new, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the names written twice, as meant
        clean_infos = old.infolist()
        for info in clean_infos:
            new.writestr(info.filename, old.read(info))
        for name, data in replace.items():
            new.writestr(f"{root}/{name}", data)
    written = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    infos = written.infolist()
    locals_end = written.start_dir
    benign = infos[: len(clean_infos)]
    evil = {info.filename: info for info in infos[len(clean_infos) :]}
    torch_view = [evil.get(info.filename, info) for info in benign]

    directory_for_zipfile_at = locals_end
    directory_size = sum(CENTRAL.size + len(i.filename.encode()) for i in benign)
    directory_for_torch_at = directory_for_zipfile_at + directory_size + EOCD.size  # in the comment
    # zipfile adds (where its directory is - the stored offset) to each entry's offset: pre-subtract it.
    shift = directory_for_zipfile_at - directory_for_torch_at
    for_zipfile = b"".join(_central(info, info.header_offset - shift) for info in benign)
    for_torch = b"".join(_central(info, info.header_offset) for info in torch_view)
    assert len(for_torch) == len(for_zipfile) == directory_size
    count = len(benign)
    end = EOCD.pack(b"PK\x05\x06", 0, 0, count, count, directory_size, directory_for_torch_at, len(for_torch))
    dst.write_bytes(buffer.getvalue()[:locals_end] + for_zipfile + end + for_torch)
    return dst


def _central(info: zipfile.ZipInfo, offset: int) -> bytes:
    raw = info.filename.encode()
    dos_date = (info.date_time[0] - 1980) << 9 | info.date_time[1] << 5 | info.date_time[2]
    dos_time = info.date_time[3] << 11 | info.date_time[4] << 5 | info.date_time[5] // 2
    return CENTRAL.pack(
        b"PK\x01\x02", 20, 3, 20, 0, info.flag_bits, info.compress_type, dos_time, dos_date, info.CRC,
        info.compress_size, info.file_size, len(raw), 0, 0, 0, 0, 0, offset,
    ) + raw  # fmt: skip


def with_bad_crc(src: Path, dst: Path, suffix: str = "models/model.json") -> Path:
    """``src`` with one byte of the entry ``...suffix`` changed, as a damaged disk or download would."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    name_length, extra_length = struct.unpack_from("<2H", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    data[start] ^= 0x01  # the JSON's "{" becomes "z"
    dst.write_bytes(bytes(data))
    return dst


def case_folded(clean: Path, dst: Path, marker: Path) -> Path:
    """One archive, two programs, depending on how names fold: Python's ``str.lower`` turns a
    capital sigma into a small sigma, or a final sigma, by context; torch's zip reader (miniz)
    folds ASCII letters only.

    Torch loads the program ``weight_A`` + capital sigma and reads its weights config, which
    declares a pickled weight. A checker that lower-cases names in Python reads that program as
    ``weight_a`` + small sigma, with a benign weights config of that name, which declares the
    pickled config's lower-cased name (final sigma now) as a raw weight.
    """
    sigma, small, final = (
        "\N{GREEK CAPITAL LETTER SIGMA}",
        "\N{GREEK SMALL LETTER SIGMA}",
        "\N{GREEK SMALL LETTER FINAL SIGMA}",
    )
    torch_name, checker_name = f"weight_A{sigma}", f"weight_a{small}"
    with zipfile.ZipFile(clean) as z:
        root = root_of(clean)
        entries = {info.filename.split("/", 1)[1]: z.read(info) for info in z.infolist()}
    weights = json.loads(entries.pop("data/weights/model_weights_config.json"))
    raw = {"is_param": False, "use_pickle": False, "tensor_meta": weights["config"]["linear.bias"]["tensor_meta"]}
    weights["config"]["x.a"] = dict(raw, path_name=f"weight_a{final}_weights_config.json")
    weights["config"]["x.b"] = dict(raw, path_name="weight_evil")
    pickled = {"path_name": "weight_evil", "is_param": True, "use_pickle": True, "tensor_meta": None}
    evil = {"config": {"linear.weight": pickled}}
    renamed = {
        f"models/{torch_name}.json": entries.pop("models/model.json"),
        f"data/sample_inputs/{torch_name}.pt": entries.pop("data/sample_inputs/model.pt"),
        f"data/weights/{checker_name}_weights_config.json": json.dumps(weights).encode(),
        f"data/weights/{torch_name}_weights_config.json": json.dumps(evil).encode(),
        "data/weights/weight_evil": torch_saved(WritesMarker(marker)),
        f"data/constants/{checker_name}_constants_config.json": entries.pop(
            "data/constants/model_constants_config.json"
        ),
    }
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in {**entries, **renamed}.items():
            z.writestr(f"{root}/{name}", data)
    return dst
