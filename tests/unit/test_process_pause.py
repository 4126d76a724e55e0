"""Stopping and continuing a child process: nested holds, the time stopped, an exited child."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.process_pause import Pause

pytestmark = pytest.mark.skipif(
    not (hasattr(os, "pidfd_open") and Path("/proc/self/stat").exists()), reason="Linux pidfds and /proc"
)


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def child():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    yield process
    process.kill()
    process.wait()


def test_holds_nest_and_the_time_stopped_is_counted(child):
    pause = Pause(child.pid)
    assert pause.supported and pause.stopped_s() == 0.0
    pause.hold()
    pause.hold()
    _until(lambda: _stopped(child.pid))
    pause.release()
    assert _stopped(child.pid)
    first = pause.stopped_s()
    _until(lambda: pause.stopped_s() > first)  # counting while stopped
    pause.release()
    _until(lambda: not _stopped(child.pid))
    done = pause.stopped_s()
    assert done > 0 and pause.stopped_s() == done, "not counting once continued"
    pause.release()  # one release too many: ignored
    assert not _stopped(child.pid)


def test_close_continues_a_stopped_child(child):
    pause = Pause(child.pid)
    pause.hold()
    _until(lambda: _stopped(child.pid))
    pause.close()
    _until(lambda: not _stopped(child.pid))
    pause.hold()  # closed: does nothing
    assert not _stopped(child.pid) and not pause.supported


def test_a_child_that_exited_is_no_error_and_no_other_process_is_signalled(child):
    pause = Pause(child.pid)
    child.kill()
    child.wait()  # reaped: its pid may now be anyone's, its pidfd still names it alone
    pause.hold()
    pause.release()
    assert pause.stopped_s() == 0.0
    pause.close()


def test_a_pid_that_is_not_a_process_gives_a_pause_that_does_nothing():
    pause = Pause(2**22 + 12345)
    assert not pause.supported
    pause.hold()
    pause.release()
    pause.close()
