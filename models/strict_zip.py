"""Read a zip archive the one way every zip reader would, or refuse it; write a fresh one.

Zip readers disagree on files that are not plainly laid out. Python's ``zipfile`` finds the
central directory by the end record's *size* field, counting back from the record, and
shifts every entry by the difference ("prepended data"); miniz, torch's reader, trusts the
record's stored *offset* and entry *count*. One file can so show each reader a different
directory: a benign one to a checker using ``zipfile``, one naming pickled weights to torch.

``read_zip`` accepts only a file that every reader must read alike: entries from byte 0,
each local header followed by its data (and data descriptor), nothing between them, the
central directory right after the last one and right before the end records, the stored
offset, size and count equal to what is there, the zip64 records (when present) equal to
the classic ones, one end record ending the file. Each entry is stored or deflated, not
encrypted, its name valid (UTF-8 where it says so), its CRC-32 right; deflated data is
inflated in bounded steps, never past the size the entry declares or the caller allows.
``write_zip`` then writes the checked entries into a new archive, so a reader given that
reads exactly what was checked, however the original was built.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, directory disk, entries here, entries, size, offset, comment
_LOCATOR = struct.Struct("<4sLQL")  # signature, disk of the zip64 record, its offset, number of disks
_EOCD64 = struct.Struct("<4sQ2H2L2Q2Q")  # signature, size, versions, disks, entries here, entries, size, offset
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # as zipfile's structCentralDir
_LOCAL = struct.Struct("<4s2B4HL2L2H")  # as zipfile's structFileHeader
_SIGNATURES = {"eocd": b"PK\x05\x06", "locator": b"PK\x06\x07", "eocd64": b"PK\x06\x06"}
_CENTRAL_SIG, _LOCAL_SIG, _DESCRIPTOR_SIG = b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"
_MAX_COMMENT = 0xFFFF
_ENCRYPTED = 0x1 | 0x40 | 0x2000  # traditional, strong, masked central directory
_DESCRIPTOR, _UTF8 = 0x8, 0x800
_STORED, _DEFLATED = 0, 8
_CHUNK = 1 << 20


class ZipError(ValueError):
    """The bytes are a zip archive this module refuses to read; the message says why."""


class NotAZip(ZipError):
    """The bytes have no end-of-central-directory record at all."""


@dataclass(frozen=True)
class ZipEntry:
    """One checked entry: its name and its uncompressed bytes (a view of the file when stored)."""

    name: str
    data: bytes | memoryview


@dataclass
class _Record:
    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int


def read_zip(data: bytes, max_size: Callable[[str], int], max_inflated: int) -> list[ZipEntry]:
    """The entries of ``data`` in central-directory order, or ``ZipError``.

    ``max_size(name)``: the most bytes entry ``name`` may hold uncompressed; ``max_inflated``: the
    most bytes all deflated entries together may inflate to. Both bound what an entry declares,
    checked before anything is inflated, and what it inflates to, checked as it inflates."""
    view = memoryview(data)
    cd_offset, cd_size, count = _end_records(data)
    records = _central_directory(view, cd_offset, cd_size, count)
    _tile(view, records, cd_offset)
    inflated = 0
    for record in records:
        limit = max_size(record.name)
        if record.size > limit:
            raise ZipError(f"{record.name} declares {record.size} bytes uncompressed, over the {limit}-byte limit")
        if record.method == _DEFLATED:
            inflated += record.size
            if inflated > max_inflated:
                raise ZipError(
                    f"{record.name} declares {record.size} bytes to inflate, past the {max_inflated} bytes "
                    "all deflated entries may inflate to"
                )
    return [ZipEntry(r.name, _content(view, r)) for r in records]


def write_zip(entries: list[ZipEntry]) -> bytes:
    """A fresh archive of ``entries``, stored, in this order, laid out as ``read_zip`` accepts."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, entry.data)
    return buffer.getvalue()


def _end_records(data: bytes) -> tuple[int, int, int]:
    """The central directory's offset, size and entry count, as every reader finds them."""
    search_from = max(0, len(data) - _EOCD.size - _MAX_COMMENT)
    eocd = data.rfind(_SIGNATURES["eocd"], search_from)  # the last one: where both readers look first
    if eocd < 0:
        raise NotAZip("no end-of-central-directory record")
    if eocd + _EOCD.size > len(data):
        raise ZipError(f"the end-of-central-directory record at byte {eocd} is cut off by the end of the file")
    _, disk, cd_disk, here, count, cd_size, cd_offset, comment = _EOCD.unpack_from(data, eocd)
    if eocd + _EOCD.size + comment != len(data):
        raise ZipError(
            f"the end-of-central-directory record at byte {eocd} has a {comment}-byte comment, "
            f"but {len(data) - eocd - _EOCD.size} bytes follow it"
        )
    if disk or cd_disk or here != count:
        raise ZipError("it spans several disks (a split archive)")
    trailer = eocd
    locator = eocd - _LOCATOR.size
    if locator >= 0 and data[locator : locator + 4] == _SIGNATURES["locator"]:
        trailer, (cd_offset, cd_size, count) = _zip64(data, locator, (cd_offset, cd_size, count))
    elif count == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
        raise ZipError("its end record defers to zip64 values (0xFFFF...), but it has no zip64 end record")
    if cd_offset + cd_size != trailer:
        previous = data.rfind(_SIGNATURES["eocd"], min(cd_offset + cd_size, trailer), eocd)
        if previous >= 0:
            raise ZipError(
                f"it has more than one end-of-central-directory record (at bytes {previous} and {eocd}): "
                "zip readers would disagree on which one holds"
            )
        raise ZipError(
            f"its end record places the {cd_size}-byte central directory at byte {cd_offset}, but the "
            f"directory before the end records starts at byte {trailer - cd_size}: zip readers would "
            "disagree on its entries (data prepended, or a second directory)"
        )
    return cd_offset, cd_size, count


def _zip64(data: bytes, locator: int, classic: tuple[int, int, int]) -> tuple[int, tuple[int, int, int]]:
    """Where the zip64 end record starts and its offset, size and count, which the classic end
    record must repeat (or leave at 0xFFFF...)."""
    _, disk, record, disks = _LOCATOR.unpack_from(data, locator)
    if disk or disks != 1:
        raise ZipError("it spans several disks (a split archive)")
    # zipfile reads the zip64 end record just before the locator, miniz where the locator points.
    before = locator - _EOCD64.size
    if before < 0 or data[before : before + 4] != _SIGNATURES["eocd64"]:
        raise ZipError(f"its zip64 locator (at byte {locator}) has no zip64 end record before it")
    if record != before:
        raise ZipError(
            f"its zip64 locator points at byte {record}, but its zip64 end record is at byte {before}: "
            "zip readers would disagree on which records to read"
        )
    _, size, _, _, disk, cd_disk, here, count, cd_size, cd_offset = _EOCD64.unpack_from(data, record)
    if record + 12 + size != locator:
        raise ZipError(f"its zip64 end record at byte {record} declares {size} bytes, not what lies before its locator")
    if disk or cd_disk or here != count:
        raise ZipError("it spans several disks (a split archive)")
    values = (cd_offset, cd_size, count)
    named = ("directory offset", "directory size", "entry count")
    for what, old, new, sentinel in zip(named, classic, values, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF), strict=True):
        if old not in (new, sentinel):
            raise ZipError(f"its zip64 end record says {what} {new}, its end record {old}: the two disagree")
    return record, values


def _central_directory(view: memoryview, cd_offset: int, cd_size: int, count: int) -> list[_Record]:
    records: list[_Record] = []
    position, end = cd_offset, cd_offset + cd_size
    while position < end:
        if position + _CENTRAL.size > end or view[position : position + 4] != _CENTRAL_SIG:
            raise ZipError(f"its central directory holds something other than entries at byte {position}")
        fields = _CENTRAL.unpack_from(view, position)
        flags, method, _, _, crc, compressed, size, name_length, extra_length, comment_length, disk = fields[5:16]
        offset = fields[18]
        start = position + _CENTRAL.size
        position = start + name_length + extra_length + comment_length
        if position > end:
            raise ZipError(f"its central directory's entry at byte {start - _CENTRAL.size} runs past the directory")
        raw_name = bytes(view[start : start + name_length])
        name = _name(raw_name, flags)
        extra = bytes(view[start + name_length : start + name_length + extra_length])
        compressed, size, offset, disk = _zip64_fields(name, extra, compressed, size, offset, disk)
        if disk:
            raise ZipError(f"{name} lies on another disk (a split archive)")
        if flags & _ENCRYPTED:
            raise ZipError(f"{name} is encrypted")
        if method not in (_STORED, _DEFLATED):
            raise ZipError(f"{name} uses compression method {method}; only stored (0) and deflate (8) are read")
        if method == _STORED and compressed != size:
            raise ZipError(f"{name} is stored, yet its sizes differ ({compressed} and {size} bytes)")
        records.append(_Record(name, raw_name, flags, method, crc, compressed, size, offset))
    if len(records) != count:
        raise ZipError(f"its end record counts {count} entries, but its central directory holds {len(records)}")
    return records


def _name(raw: bytes, flags: int) -> str:
    if b"\x00" in raw:
        # zipfile cuts a name at its first NUL, miniz does not: the two would name different entries.
        raise ZipError(f"an entry's name holds a NUL byte ({raw[:80]!r})")
    if flags & _UTF8:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ZipError(f"an entry's name is flagged UTF-8 but is not UTF-8 ({raw[:80]!r})") from None
    return raw.decode("cp437")  # what zipfile does with a name not flagged UTF-8


def _zip64_fields(name: str, extra: bytes, *fields: int) -> tuple[int, int, int, int]:
    """Sizes, offset and disk, with the zip64 extra field's values where the classic ones are 0xFFFF...;
    both readers take them in this order and only for those fields."""
    compressed, size, offset, disk = fields
    zip64 = [extra[i + 4 : i + 4 + n] for i, tag, n in _extra_fields(name, extra) if tag == 1]
    if len(zip64) > 1:
        raise ZipError(f"{name} has {len(zip64)} zip64 extra fields")
    values = list(struct.unpack(f"<{len(zip64[0]) // 8}Q", zip64[0][: len(zip64[0]) // 8 * 8])) if zip64 else []
    result = []
    for value, sentinel in ((size, 0xFFFFFFFF), (compressed, 0xFFFFFFFF), (offset, 0xFFFFFFFF)):
        if value == sentinel:
            if not values:
                raise ZipError(f"{name} defers a size or offset to a zip64 extra field it does not have")
            value = values.pop(0)
        result.append(value)
    size, compressed, offset = result
    return compressed, size, offset, disk


def _extra_fields(name: str, extra: bytes) -> list[tuple[int, int, int]]:
    fields, position = [], 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<2H", extra, position)
        if position + 4 + length > len(extra):
            raise ZipError(f"{name} has an extra field that runs past its end")
        fields.append((position, tag, length))
        position += 4 + length
    return fields


def _tile(view: memoryview, records: list[_Record], cd_offset: int) -> None:
    """Every byte before the central directory belongs to exactly one entry: its local header, its
    data and its data descriptor, one after the other from byte 0."""
    ordered = sorted(records, key=lambda r: r.offset)
    position = 0
    for index, record in enumerate(ordered):
        if record.offset != position:
            if index == 0:
                raise ZipError(f"{record.offset} bytes come before the first entry's local header")
            if record.offset < position:
                raise ZipError(f"{record.name} overlaps {ordered[index - 1].name}")
            raise ZipError(f"bytes {position} to {record.offset} belong to no entry")
        following = ordered[index + 1].offset if index + 1 < len(ordered) else cd_offset
        position = _local(view, record, following)
    if position != cd_offset:
        raise ZipError(f"bytes {position} to {cd_offset}, before the central directory, belong to no entry")


def _local(view: memoryview, record: _Record, following: int) -> int:
    """Check ``record``'s local header against its directory entry; where the entry ends."""
    at = record.offset
    if at + _LOCAL.size > following or view[at : at + 4] != _LOCAL_SIG:
        raise ZipError(f"{record.name} has no local header at byte {at}")
    fields = _LOCAL.unpack_from(view, at)
    flags, method, crc, compressed, size, name_length, extra_length = fields[3], fields[4], *fields[7:]
    start = at + _LOCAL.size
    raw_name = bytes(view[start : start + name_length])
    if raw_name != record.raw_name or method != record.method or (flags ^ record.flags) & (_DESCRIPTOR | _ENCRYPTED):
        raise ZipError(f"{record.name}'s local header names another entry, or reads it another way")
    data_start = start + name_length + extra_length
    data_end = data_start + record.compressed
    if data_end > following:
        raise ZipError(f"{record.name}'s data runs into the next entry or the central directory")
    if not flags & _DESCRIPTOR:
        sizes = {(record.compressed, record.size), (0xFFFFFFFF, 0xFFFFFFFF)}  # or deferred to zip64
        if crc != record.crc or (compressed, size) not in sizes:
            raise ZipError(f"{record.name}'s local header and directory entry disagree on its CRC or sizes")
        return data_end
    # A data descriptor: with or without its signature, with 4- or 8-byte sizes (zip64).
    tail = bytes(view[data_end:following])
    layouts = {12: "<3L", 16: "<4s3L", 20: "<LQQ", 24: "<4sLQQ"}
    layout = layouts.get(len(tail))
    values = struct.unpack(layout, tail) if layout else ()
    if values and layout and layout.startswith("<4s") and values[0] != _DESCRIPTOR_SIG:
        values = ()
    if tuple(values[-3:]) != (record.crc, record.compressed, record.size):
        raise ZipError(f"{record.name}'s data descriptor is not right after its data, or disagrees with its entry")
    return following


def _content(view: memoryview, record: _Record) -> bytes | memoryview:
    """The entry's uncompressed bytes, their CRC-32 checked; deflated data inflated in steps,
    never past the declared size (a bomb is refused having cost at most that)."""
    header = _LOCAL.unpack_from(view, record.offset)
    start = record.offset + _LOCAL.size + header[-2] + header[-1]
    raw = view[start : start + record.compressed]
    if record.method == _STORED:
        content: bytes | memoryview = raw
    else:
        content = _inflate(raw, record)
    crc = zlib.crc32(content)
    if crc != record.crc:
        raise ZipError(f"{record.name} fails its CRC-32 check (stored {record.crc:#010x}, computed {crc:#010x})")
    return content


def _inflate(raw: memoryview, record: _Record) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pieces: list[bytes] = []
    produced = 0
    try:
        for step in range(0, max(len(raw), 1), _CHUNK):
            pending: bytes | memoryview = raw[step : step + _CHUNK]
            while pending or not inflater.eof:
                piece = inflater.decompress(pending, record.size - produced + 1)
                produced += len(piece)
                if produced > record.size:
                    raise ZipError(f"{record.name} inflates past the {record.size} bytes it declares")
                pieces.append(piece)
                pending = inflater.unconsumed_tail
                if not piece and not pending:
                    break
    except zlib.error as exc:
        raise ZipError(f"{record.name} has corrupt deflate data ({exc})") from None
    if not inflater.eof:
        raise ZipError(f"{record.name} has corrupt deflate data (it ends before the deflate stream does)")
    if inflater.unused_data:
        raise ZipError(f"{record.name} has {len(inflater.unused_data)} bytes after the end of its deflate data")
    if produced != record.size:
        raise ZipError(f"{record.name} inflates to {produced} bytes, not the {record.size} it declares")
    return b"".join(pieces)
