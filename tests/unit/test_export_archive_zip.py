"""The zip under a ``torch.export`` archive is read one way or refused (``models.strict_zip``).

Each file here is a real ``torch.export.save`` output (or its copy by Python's ``zipfile``),
its bytes then edited as an attacker, or a damaged disk, would. Every refusal is one
``ModelLoadError`` line naming the file, before torch reads anything.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from models import export_archive
from models.export_archive import check_export_archive, repack
from models.loading import ModelSpec, load_model
from models.strict_zip import read_zip
from streams.errors import ModelLoadError
from tests.crafted_archives import Tiny, export_tiny

MiB = 1 << 20


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """As torch writes it: data descriptors after each entry, zip64 end records."""
    return export_tiny(tmp_path / "tiny.pt2")


def copied(src: Path, dst: Path, compression: int = zipfile.ZIP_STORED, **replace: bytes) -> Path:
    """``src`` copied by Python's zipfile (no descriptors, no zip64), entries compressed as asked;
    ``replace`` gives some entries (named without the root, ``/`` as ``__``) other bytes."""
    replace = {name.replace("__", "/"): data for name, data in replace.items()}
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", compression) as new:
        for info in old.infolist():
            new.writestr(info.filename, replace.get(info.filename.split("/", 1)[1], old.read(info)))
    return dst


def headers(data: bytes, suffix: str) -> tuple[int, int]:
    """Byte offsets of the local header and the central directory entry of the entry named ``...suffix``."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
        position = z.start_dir
    while True:
        name_length, extra_length, comment_length = struct.unpack_from("<3H", data, position + 28)
        if data[position + 46 : position + 46 + name_length].decode().endswith(suffix):
            return info.header_offset, position
        position += 46 + name_length + extra_length + comment_length


def patched(data: bytes, *edits: tuple[int, str, int]) -> bytes:
    """``data`` with each ``(offset, struct format, value)`` written over it."""
    out = bytearray(data)
    for offset, fmt, value in edits:
        struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def refused(path: Path, says: str) -> str:
    with pytest.raises(ModelLoadError, match=says) as caught:
        load_model(ModelSpec(exported=path))
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, "one line, naming the file"
    return message


def test_an_archive_copied_and_deflated_by_zipfile_still_loads_and_computes(archive, tmp_path):
    deflated = copied(archive, tmp_path / "deflated.pt2", zipfile.ZIP_DEFLATED)
    module = load_model(ModelSpec(exported=deflated)).module
    torch.manual_seed(0)
    original, x = Tiny(), torch.randn(5, 3)
    assert torch.allclose(module(x), original(x))


def test_torch_is_handed_exactly_the_checked_entries_in_a_plain_zip(archive):
    entries = check_export_archive(archive.read_bytes(), archive)
    with zipfile.ZipFile(archive) as z:
        assert [(e.name, bytes(e.data)) for e in entries] == [(i.filename, z.read(i)) for i in z.infolist()]
    again = read_zip(repack(entries), lambda name: 1 << 40, 0)  # the fresh archive is stored, and strict
    assert [(e.name, bytes(e.data)) for e in again] == [(e.name, bytes(e.data)) for e in entries]


def test_a_second_end_record_is_refused(archive, tmp_path):
    data = archive.read_bytes()
    first = len(data) - 22
    twice = tmp_path / "twice.pt2"
    twice.write_bytes(data + data[first:])  # the end record again: zipfile now reads the second one
    assert refused(twice, "more than one end-of-central-directory record") == (
        f"refusing exported program {twice}: it has more than one end-of-central-directory record "
        f"(at bytes {first} and {first + 22}): zip readers would disagree on which one holds"
    )
    # Hidden in the first one's comment: both end at the end of the file.
    in_comment = tmp_path / "in-comment.pt2"
    in_comment.write_bytes(patched(data, (first + 20, "<H", 22)) + data[first:])
    refused(in_comment, f"more than one end-of-central-directory record \\(at bytes {first} and {first + 22}\\)")


def test_data_before_the_first_local_header_is_refused(archive, tmp_path):
    junk = b"#!/bin/sh\necho not a model\n"
    # Prepended as is: zipfile shifts every entry by the difference and reads on; miniz does not.
    plain = copied(archive, tmp_path / "plain.pt2").read_bytes()
    prepended = tmp_path / "prepended.pt2"
    prepended.write_bytes(junk + plain)
    with zipfile.ZipFile(prepended) as z:
        assert z.testzip() is None, "zipfile tolerates prepended data"
    size, offset = struct.unpack_from("<2L", plain, len(plain) - 10)
    assert refused(prepended, "zip readers would disagree") == (
        f"refusing exported program {prepended}: its end record places the {size}-byte central directory at "
        f"byte {offset}, but the directory before the end records starts at byte {offset + len(junk)}: zip readers "
        "would disagree on its entries (data prepended, or a second directory)"
    )
    # torch's own layout: zipfile reads the zip64 end record before the locator, miniz where it points.
    torch_prepended = tmp_path / "torch-prepended.pt2"
    torch_prepended.write_bytes(junk + archive.read_bytes())
    record = len(archive.read_bytes()) - 22 - 20 - 56
    refused(
        torch_prepended,
        f"its zip64 locator points at byte {record}, but its zip64 end record is at byte {record + len(junk)}: "
        "zip readers would disagree on which records to read",
    )
    # Prepended with every offset counted from the start of the file (a self-extracting archive).
    shifted = tmp_path / "shifted.pt2"
    shifted.write_bytes(junk)
    with zipfile.ZipFile(archive) as old, zipfile.ZipFile(shifted, "a") as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
    assert refused(shifted, "before the first entry") == (
        f"refusing exported program {shifted}: {len(junk)} bytes come before the first entry's local header"
    )


def test_a_stored_directory_offset_or_entry_count_that_disagrees_is_refused(archive, tmp_path):
    data = copied(archive, tmp_path / "plain.pt2").read_bytes()  # no zip64 records: one end record to edit
    end = len(data) - 22
    count = struct.unpack_from("<H", data, end + 10)[0]
    fewer = tmp_path / "fewer.pt2"
    fewer.write_bytes(patched(data, (end + 8, "<H", count - 1), (end + 10, "<H", count - 1)))
    assert refused(fewer, "counts") == (
        f"refusing exported program {fewer}: its end record counts {count - 1} entries, "
        f"but its central directory holds {count}"
    )
    offset = struct.unpack_from("<L", data, end + 16)[0]
    moved = tmp_path / "moved.pt2"
    moved.write_bytes(patched(data, (end + 16, "<L", offset - 64)))
    refused(moved, f"central directory at byte {offset - 64}, but the directory before the end records starts at")


def test_zip64_records_that_disagree_with_the_end_record_are_refused(archive, tmp_path):
    data = archive.read_bytes()
    end = len(data) - 22
    locator = end - 20
    record = struct.unpack_from("<Q", data, locator + 8)[0]
    count = struct.unpack_from("<Q", data, record + 32)[0]
    more = tmp_path / "more.pt2"
    more.write_bytes(patched(data, (record + 24, "<Q", count + 1), (record + 32, "<Q", count + 1)))
    assert refused(more, "zip64") == (
        f"refusing exported program {more}: its zip64 end record says entry count {count + 1}, "
        f"its end record {count}: the two disagree"
    )
    elsewhere = tmp_path / "elsewhere.pt2"
    elsewhere.write_bytes(patched(data, (locator + 8, "<Q", record - 8)))
    refused(elsewhere, f"its zip64 locator points at byte {record - 8}, but its zip64 end record is at byte {record}")
    gone = tmp_path / "gone.pt2"
    gone.write_bytes(patched(data, (record, "<4s", b"PK\x00\x00")))
    refused(gone, f"its zip64 locator \\(at byte {locator}\\) has no zip64 end record before it")


def deflate_bomb(megabytes: int) -> bytes:
    """Raw deflate data for ``megabytes`` MiB of spaces, made in milliseconds: after a full flush
    the compressor starts afresh, so each MiB compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b" " * MiB) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * megabytes + compressor.flush()


def with_deflated_entry(data: bytes, suffix: str, deflated: bytes, size: int, crc: int) -> bytes:
    """``data`` (written by zipfile, stored) with the entry ``...suffix`` replaced by ``deflated``,
    declared as ``size`` bytes with CRC ``crc``. Entries after it move; so do their offsets."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as new:
            for info in infos:
                new.writestr(info.filename, deflated if info.filename.endswith(suffix) else z.read(info))
    result = out.getvalue()
    local, central = headers(result, suffix)
    edits = [(at + 8 if at == local else at + 10, "<H", 8) for at in (local, central)]  # method: deflate
    edits += [(local + 14, "<L", crc), (local + 22, "<L", size), (central + 16, "<L", crc), (central + 24, "<L", size)]
    return patched(result, *edits)


def test_a_deflate_bomb_declaring_its_size_is_refused_before_it_is_inflated(archive, tmp_path):
    data = copied(archive, tmp_path / "plain.pt2").read_bytes()
    bomb = tmp_path / "bomb.pt2"
    size = 300 * MiB  # more than a program's JSON may hold
    bomb.write_bytes(with_deflated_entry(data, "models/model.json", deflate_bomb(300), size, 0))
    assert bomb.stat().st_size < MiB
    tracemalloc.start()
    try:
        message = refused(bomb, "declares")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (
        f"refusing exported program {bomb}: tiny/models/model.json declares {size} bytes uncompressed, "
        f"over the {export_archive.MAX_JSON_BYTES}-byte limit"
    )
    assert peak < 32 * MiB, f"{peak} bytes allocated to refuse it"


def test_a_deflate_bomb_declaring_a_small_size_stops_inflating_there(archive, tmp_path):
    data = copied(archive, tmp_path / "plain.pt2").read_bytes()
    bomb = tmp_path / "liar.pt2"
    bomb.write_bytes(with_deflated_entry(data, "models/model.json", deflate_bomb(1024), 4096, 0))  # 1 GiB inside
    tracemalloc.start()
    try:
        message = refused(bomb, "inflates past")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (
        f"refusing exported program {bomb}: tiny/models/model.json inflates past the 4096 bytes it declares"
    )
    assert peak < 32 * MiB, f"{peak} bytes allocated to refuse it"


def test_a_small_file_whose_program_inflates_to_many_empty_objects_is_refused_before_it_is_inflated(archive, tmp_path):
    # Valid JSON that is all empty objects costs about 25 bytes of memory per byte to parse:
    # 24 MiB of it (more than any real program, less than the old 256 MiB limit) is over 500 MiB.
    size = 24 * MiB
    program = b'{"x":[' + b"{}," * ((size - 10) // 3) + b"{}]}"
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = deflated.compress(program) + deflated.flush()
    crc, size = zlib.crc32(program), len(program)
    del program
    bomb = tmp_path / "objects.pt2"
    plain = copied(archive, tmp_path / "plain.pt2").read_bytes()
    bomb.write_bytes(with_deflated_entry(plain, "models/model.json", data, size, crc))
    assert bomb.stat().st_size < 100_000
    tracemalloc.start()
    try:
        message = refused(bomb, "declares")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message == (
        f"refusing exported program {bomb}: tiny/models/model.json declares {size} bytes uncompressed, "
        f"over the {16 * MiB}-byte limit"
    )
    assert peak < 32 * MiB, f"{peak} bytes allocated to refuse it"


def test_deflated_entries_together_may_inflate_only_so_far(archive, tmp_path, monkeypatch):
    deflated = copied(archive, tmp_path / "deflated.pt2", zipfile.ZIP_DEFLATED)
    monkeypatch.setattr(export_archive, "MAX_INFLATED_BYTES", 1000)
    refused(deflated, "declares \\d+ bytes to inflate, past the 1000 bytes all deflated entries may inflate to")


def test_a_bad_crc_is_refused(archive, tmp_path):
    data = archive.read_bytes()
    with zipfile.ZipFile(archive) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("models/model.json"))
        expected = info.CRC
    local, _ = headers(data, "models/model.json")
    start = local + 30 + sum(struct.unpack_from("<2H", data, local + 26))
    flipped = data.index(b'"', start)  # a quote in the program's JSON becomes an apostrophe
    damaged = tmp_path / "damaged.pt2"
    damaged.write_bytes(patched(data, (flipped, "<B", ord("'"))))
    computed = zlib.crc32(data[start : start + info.compress_size].replace(b'"', b"'", 1))
    assert refused(damaged, "CRC") == (
        f"refusing exported program {damaged}: tiny/models/model.json fails its CRC-32 check "
        f"(stored {expected:#010x}, computed {computed:#010x})"
    )


def test_a_name_flagged_utf8_that_is_not_is_refused(archive, tmp_path):
    data = archive.read_bytes()  # torch flags every name UTF-8
    local, central = headers(data, "archive_format")
    bad = bytearray(data)
    for at, header in ((local, 30), (central, 46)):
        name = at + header + len("tiny/")
        bad[name : name + 2] = b"\xc3\x28"  # "ar" -> a lead byte and no continuation
    broken = tmp_path / "not-utf8.pt2"
    broken.write_bytes(bytes(bad))
    assert refused(broken, "UTF-8") == (
        f"refusing exported program {broken}: an entry's name is flagged UTF-8 but is not UTF-8 "
        "(b'tiny/\\xc3(chive_format')"
    )


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ("encrypted", "tiny/byteorder is encrypted"),
        ("method 99", "tiny/byteorder uses compression method 99; only stored \\(0\\) and deflate \\(8\\) are read"),
    ],
)
def test_an_encrypted_entry_or_an_unknown_compression_is_refused(archive, tmp_path, edit, says):
    data = archive.read_bytes()
    local, central = headers(data, "byteorder")
    if edit == "encrypted":
        flags = struct.unpack_from("<H", data, central + 8)[0] | 1
        edits = [(local + 6, "<H", flags), (central + 8, "<H", flags)]
    else:
        edits = [(local + 8, "<H", 99), (central + 10, "<H", 99)]
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(patched(data, *edits))
    assert refused(broken, says) == f"refusing exported program {broken}: {says.replace(chr(92), '')}"


def test_corrupt_deflate_data_is_refused(archive, tmp_path):
    data = copied(archive, tmp_path / "deflated.pt2", zipfile.ZIP_DEFLATED).read_bytes()
    local, _ = headers(data, "models/model.json")
    start = local + 30 + sum(struct.unpack_from("<2H", data, local + 26))
    broken = tmp_path / "corrupt.pt2"
    broken.write_bytes(patched(data, (start, "<B", 0xFF)))  # block type 3, which deflate does not have
    assert refused(broken, "corrupt deflate data") == (
        f"refusing exported program {broken}: tiny/models/model.json has corrupt deflate data "
        "(Error -3 while decompressing data: invalid block type)"
    )


def test_not_a_zip_at_all_is_one_line(tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"\x00" * 100)
    assert refused(junk, "not a zip file") == (
        f"exported program {junk} is not a torch.export archive (not a zip file: no end-of-central-directory record)"
    )
