"""The state directory's clean-up removes only folders sluice marked as a process's own, once that
process is gone (its pid free, or taken by a process started at another time), and never crashes
on what else an operator keeps there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.build import build_store
from streams.features import folders
from streams.features.folders import OWNER_FILE, make_own_folder, release_own_folder, remove_stale
from tests.unit.test_features import spec_with

ROOT = Path(__file__).resolve().parents[2]


def made_by_a_process_now_gone(parent: Path) -> Path:
    code = (
        "from pathlib import Path\nfrom streams.features.folders import make_own_folder\n"
        f"print(make_own_folder(Path({str(parent)!r}), 'backfill-'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return Path(done.stdout.strip())


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.mark.parametrize(
    "name",
    [
        "fraud-state-changelog.20261206",  # an operator's backup of a changelog topic's folder
        "acct-state.4000",  # the live copy of a changelog topic named so
        "x.99999999999999999999",  # a pid no system has (os.kill raised OverflowError)
        "t-0.999999999",
        "backfill-999999999-abc",
        f"t-1.{os.getpid()}",
    ],
)
def test_a_folder_sluice_did_not_mark_is_left_alone_whatever_its_name(tmp_path, name):
    (tmp_path / name).mkdir()
    (tmp_path / name / "data").write_text("keep me")
    remove_stale(tmp_path)
    assert (tmp_path / name / "data").read_text() == "keep me"


def test_a_marked_folder_of_a_process_that_is_gone_is_removed(tmp_path):
    folder = made_by_a_process_now_gone(tmp_path)
    assert folder.parent == tmp_path and (folder / OWNER_FILE).is_file()
    (tmp_path / "acct-state.4000").mkdir()
    remove_stale(tmp_path)
    assert names(tmp_path) == {"acct-state.4000"}


def test_a_marked_folder_of_a_running_process_is_kept(tmp_path):
    mine = make_own_folder(tmp_path, "backfill-")
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom streams.features.folders import make_own_folder\n"
        f"print(make_own_folder(Path({str(tmp_path)!r}), 't-0.private-'), flush=True)\nsys.stdin.read()\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        theirs = Path(other.stdout.readline().strip())
        remove_stale(tmp_path)
        assert names(tmp_path) == {mine.name, theirs.name}
    finally:
        other.communicate("")
    remove_stale(tmp_path)  # now that it is gone
    assert names(tmp_path) == {mine.name}
    release_own_folder(mine)


def marked(tmp_path: Path, name: str, **owner) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / OWNER_FILE).write_text(json.dumps(owner))
    return folder


def test_a_marked_folder_whose_pid_another_process_took_since_is_removed(tmp_path):
    me = folders._identity(os.getpid())
    assert me["start"] is not None
    marked(tmp_path, "reused", **{**me, "start": me["start"] - 1})  # this pid, an earlier process
    marked(tmp_path, "mine", **me)
    remove_stale(tmp_path)
    assert names(tmp_path) == {"mine"}


def test_a_marked_folder_from_before_a_reboot_is_removed(tmp_path):
    marked(tmp_path, "old", **{**folders._identity(os.getpid()), "boot": "another-boot"})
    remove_stale(tmp_path)
    assert names(tmp_path) == set()


def test_a_folder_marked_in_another_pid_namespace_is_kept_while_its_owner_holds_the_marker(tmp_path):
    folder = make_own_folder(tmp_path, "backfill-")
    elsewhere = {**folders._identity(os.getpid()), "pid": 7, "start": 1, "pidns": "pid:[1]"}
    with open(folder / OWNER_FILE, "w") as marker:  # the owner's lock stays on the file
        marker.write(json.dumps(elsewhere))
    remove_stale(tmp_path)
    assert names(tmp_path) == {folder.name}  # pid 7 here says nothing about that process
    release_own_folder(folder)  # as when that process ends
    remove_stale(tmp_path)
    assert names(tmp_path) == set()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"pid": 99999999999999999999, "start": 1}',
        b'{"pid": -1, "start": 1}',
        b'{"pid": true, "start": 1}',
        b'{"pid": "1", "start": 1}',
        b'{"pid": 1, "start": "x"}',
        b'{"start": 1}',
        b'{"pid": 999999999, "start": 1, "pad": "' + b"x" * 5000 + b'"}',
        b"\xff\xfe",
    ],
)
def test_a_marker_that_is_not_one_of_sluices_leaves_its_folder_alone(tmp_path, content):
    (tmp_path / "x.99999999999999999999").mkdir()
    (tmp_path / "x.99999999999999999999" / OWNER_FILE).write_bytes(content)
    remove_stale(tmp_path)
    assert names(tmp_path) == {"x.99999999999999999999"}


def test_odd_things_in_the_directory_neither_crash_nor_are_followed(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    gone = made_by_a_process_now_gone(tmp_path / "elsewhere")
    (tmp_path / "link-to-a-dead-folder").symlink_to(gone)
    (tmp_path / "a-file.1234").write_text("x")
    (tmp_path / "pipe").mkdir()
    os.mkfifo(tmp_path / "pipe" / OWNER_FILE)  # reading it would wait forever
    (tmp_path / "linked-marker").mkdir()
    (tmp_path / "linked-marker" / OWNER_FILE).symlink_to(gone / OWNER_FILE)
    remove_stale(tmp_path)
    assert names(tmp_path) == {"elsewhere", "link-to-a-dead-folder", "a-file.1234", "pipe", "linked-marker"}
    assert gone.is_dir()
    remove_stale(tmp_path / "not-there")


def test_a_backfills_state_folder_is_marked_as_its_own_and_removed_at_its_end(tmp_path):
    spec = replace(spec_with(10_000, 10**9, 4), store="rocksdb", directory=tmp_path, cache_keys=2)
    store = build_store(spec, live=False, changelog_topic="app.pipe-state-changelog")
    folder = store.databases.directory
    assert folder.parent == tmp_path and folder.name.startswith(f"backfill-{os.getpid()}-")
    assert json.loads((folder / OWNER_FILE).read_text())["pid"] == os.getpid()
    remove_stale(tmp_path)  # its own process runs: kept
    assert folder.is_dir()
    slots = store.slots_for([("t", 0)] * 3, [b"a", b"b", b"c"])
    assert len(np.unique(slots)) == 3
    store.close()
    assert not folder.exists()
