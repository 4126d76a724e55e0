"""Folders sluice makes for itself in a state directory, and their clean-up.

A state directory is the operator's: beside the folders sluice keeps (one per changelog topic,
named after it) it may hold their backups, other tools' files, or a changelog topic whose name
looks like anything. So sluice removes only what it marked as its own: a folder made for one
process (a backfill's state, a private copy of a partition's database) holds ``.sluice-owner``,
naming that process (its pid, its start time, the boot and the pid namespace it ran in).
``remove_stale`` removes such a folder once that process is gone: no process with that pid, or
one started at another time (the pid was reused), or the machine rebooted since. A folder
without a marker, or with one that cannot be read, is left alone, whatever its name.

A pid means nothing in another pid namespace (another container sharing the volume, or an
earlier run of this container): for a marker written there, the owner's lock on it tells
instead. The owner holds a shared ``flock`` on its marker while it runs (the kernel lets go of
it when the process ends, however it ends); a marker whose lock cannot be told is left alone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OWNER_FILE = ".sluice-owner"
# A marker is a few dozen bytes: anything much longer is not one of ours.
_MARKER_MAX_BYTES = 4096
# The markers this process holds locked, by folder: held until ``release_own_folder``, or the end.
_held: dict[Path, int] = {}


def make_own_folder(parent: Path, prefix: str) -> Path:
    """A new folder under ``parent`` (named ``prefix`` and a random suffix), marked as this
    process's: ``remove_stale`` removes it once the process is gone."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd = os.open(folder / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.write(fd, json.dumps(_identity(os.getpid())).encode())
    except BaseException:
        os.close(fd)
        raise
    _held[folder] = fd
    return folder


def release_own_folder(folder: Path) -> None:
    """Let go of the marker of ``folder`` (made by ``make_own_folder``), once it is removed."""
    fd = _held.pop(folder, None)
    if fd is not None:
        os.close(fd)


def remove_stale(directory: Path) -> None:
    """Remove the folders under ``directory`` that sluice marked as a process's own, of processes
    that are gone. Never raises for what it finds there."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    me = _identity(os.getpid())
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            marker = Path(entry.path) / OWNER_FILE
            owner = _read_marker(marker)
        except OSError:
            continue
        if owner is not None and _gone(owner, marker, me):
            log.info("removing %s, left by process %d, which is gone", entry.path, owner["pid"])
            shutil.rmtree(entry.path, ignore_errors=True)


def _read_marker(path: Path) -> dict[str, Any] | None:
    """The marker's owner, or None for a folder without one (or with something else there)."""
    try:
        # Not following a link, nor waiting on a pipe: only a plain file is a marker.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            data = os.read(fd, _MARKER_MAX_BYTES + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)
        owner = json.loads(data)
    except (OSError, ValueError):
        return None
    if len(data) > _MARKER_MAX_BYTES or not isinstance(owner, dict):
        return None
    pid, start = owner.get("pid"), owner.get("start")
    if type(pid) is not int or not 0 < pid < 2**31 or not (start is None or type(start) is int):
        return None
    return owner


def _gone(owner: dict[str, Any], marker: Path, me: dict[str, Any]) -> bool:
    if owner.get("boot") is not None and me["boot"] is not None and owner["boot"] != me["boot"]:
        return True  # the machine rebooted since: every process of then is gone
    if owner.get("pidns") != me["pidns"]:
        return _unlocked(marker)
    start = _start_time(owner["pid"])
    if start is None:
        return not _running(owner["pid"])
    return owner.get("start") != start  # another process has the pid now


def _unlocked(marker: Path) -> bool:
    """Whether no process holds the marker's lock (False where it cannot be told)."""
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held (BlockingIOError), or a file system without flock
        return False
    finally:
        os.close(fd)  # and with it the lock, if taken
    return True


def _identity(pid: int) -> dict[str, Any]:
    """What names a process on this machine, now: its pid, its start time (clock ticks after
    boot; None where /proc does not tell, or there is no such process), the boot and pid namespace."""
    return {"pid": pid, "start": _start_time(pid), "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": _pidns()}


def _start_time(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Whether a process has ``pid`` (where /proc cannot say)."""
    if os.path.isdir("/proc/self"):
        return os.path.isdir(f"/proc/{pid}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # someone else's, or not a pid this system can have: not ours to judge
    return True


def _pidns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None
