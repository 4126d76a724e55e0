"""A model in a process of its own: scores like a thread would, and a crash, a hang or a bad
file in the child costs a batch or a clear load error, never the worker's process."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models import process_runner
from models.process_runner import ProcessRunner
from streams.errors import ModelError, ModelLoadError, ModelTimeout
from tests import process_scorers
from tests.fakes import until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner():
    runners: list[ProcessRunner] = []

    def make(factory=process_scorers.row_sums, nice: int = 0, aside=None) -> ProcessRunner:
        r = ProcessRunner(factory, what="shadow s", nice=nice, aside=aside)
        runners.append(r)
        r.start()
        return r

    yield make
    for r in runners:
        r.close()


async def test_it_scores_batches_in_the_child_and_names_the_childs_model(runner):
    r = runner()
    assert (r.name, r.version) == ("row-sums", "3")
    out = await r.predict([np.arange(12, dtype=np.float32).reshape(4, 3)])
    assert out.tolist() == [3.0, 12.0, 21.0, 30.0]


async def test_the_child_runs_at_the_priority_asked_for(runner):
    r = runner(process_scorers.priority, nice=19)
    assert (await r.predict([np.zeros((2, 1), dtype=np.float32)])).tolist() == [19.0, 19.0]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's idle scheduling class")
async def test_the_lowest_priority_is_also_the_idle_scheduling_class(runner):
    lowest = runner(process_scorers.scheduling_policy, nice=19)
    assert (await lowest.predict([np.zeros((1, 1), dtype=np.float32)])).tolist() == [float(os.SCHED_IDLE)]
    ordinary = runner(process_scorers.scheduling_policy, nice=5)
    assert (await ordinary.predict([np.zeros((1, 1), dtype=np.float32)])).tolist() == [float(os.SCHED_OTHER)]


async def test_an_aside_in_the_child_is_told_each_batch_and_may_finish_when_the_runner_closes(runner, tmp_path):
    report = tmp_path / "report"
    r = runner(aside=functools.partial(process_scorers.Tally, str(report), 0.5))
    batch = [np.ones((3, 2), dtype=np.float32)]
    predictions, told = await r.predict_with(batch, extra="positions")
    assert predictions.tolist() == [2.0, 2.0, 2.0] and told == 3
    assert (await r.predict_with(batch, extra="positions"))[1] == 6
    assert (await r.predict(batch)).tolist() == [2.0, 2.0, 2.0], "without extra: predictions only, aside not told"
    await r.aclose()
    # Closed while idle: the child was asked to leave, and its aside finished (it took 0.5 s).
    assert report.read_text() == "row-sums v3: 6"


def test_a_model_that_does_not_load_is_a_load_error_with_the_childs_reason(runner):
    with pytest.raises(ModelLoadError, match="model broken v1 could not be read: truncated file"):
        runner(process_scorers.not_loadable)


async def test_a_batch_the_model_raises_on_fails_alone(runner):
    r = runner()
    with pytest.raises(ModelError, match="ValueError: a row sums to -1"):
        await r.predict([np.array([[-1.0]], dtype=np.float32)])
    assert (await r.predict([np.array([[2.0]], dtype=np.float32)])).tolist() == [2.0]


async def test_a_child_that_dies_fails_its_batch_and_is_started_again_later(runner, monkeypatch):
    r = runner()
    with pytest.raises(ModelError, match=r"exited while scoring a batch \(exit status 7\)"):
        await r.predict([np.array([[-3.0]], dtype=np.float32)])
    with pytest.raises(ModelError, match="started again in"):
        await r.predict([np.array([[1.0]], dtype=np.float32)])
    monkeypatch.setattr(process_runner, "RESTART_AFTER_S", 0.0)
    assert (await r.predict([np.array([[1.0]], dtype=np.float32)])).tolist() == [1.0]


async def test_closing_a_runner_whose_model_hangs_kills_the_child(runner, monkeypatch, tmp_path):
    monkeypatch.setattr(process_runner, "CLOSE_GRACE_S", 0.2)
    marker = tmp_path / "hanging"
    monkeypatch.setenv("SLUICE_TEST_HANG_MARKER", str(marker))
    r = runner()
    task = asyncio.ensure_future(r.predict([np.array([[-2.0]], dtype=np.float32)]))
    await asyncio.to_thread(_wait_for, marker)  # the child has the batch, and hangs in it
    process = r._process
    await r.aclose()
    assert not process.is_alive()
    with pytest.raises(ModelError, match="exited while scoring"):
        await task


def _wait_for(path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


async def test_a_batch_not_answered_in_time_ends_the_child_which_starts_again_later(runner, monkeypatch, tmp_path):
    monkeypatch.setattr(process_runner, "CLOSE_GRACE_S", 0.2)
    monkeypatch.setenv("SLUICE_TEST_HANG_MARKER", str(tmp_path / "hanging"))
    r = runner()
    r.timeout_s = 0.5
    hung = r._process
    with pytest.raises(ModelTimeout, match=r"no answer in 0\.5 s"):
        await r.predict([np.array([[-2.0]], dtype=np.float32)])
    assert not hung.is_alive(), "a process, unlike a thread, can be ended"
    monkeypatch.setattr(process_runner, "RESTART_AFTER_S", 0.0)
    assert (await r.predict([np.array([[4.0]], dtype=np.float32)])).tolist() == [4.0]


def test_a_child_ends_with_a_worker_killed_outright(tmp_path):
    script = (
        "import sys, time\n"
        "from models.process_runner import ProcessRunner\n"
        "from tests import process_scorers\n"
        "r = ProcessRunner(process_scorers.row_sums, what='s')\n"
        "r.start()\n"
        "print(r._process.pid, flush=True)\n"
        "time.sleep(3600)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True) as worker:
        try:
            child = int(worker.stdout.readline())
        finally:
            worker.kill()
    deadline = time.monotonic() + 30
    while _alive(child):
        assert time.monotonic() < deadline, "the model's process outlived its worker"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


async def test_the_child_outlives_the_thread_that_asked_for_it(runner):
    # Linux ends a child with the thread that started it: started from a short-lived thread, the
    # shadow's process would die with that thread, not with the worker.
    made: list[ProcessRunner] = []
    starter = threading.Thread(target=lambda: made.append(runner()))
    starter.start()
    await asyncio.to_thread(starter.join)  # that thread has ended
    (r,) = made
    await asyncio.sleep(0.5)  # what a SIGKILL from its end would need to land
    assert r._process.is_alive()
    assert (await r.predict([np.array([[2.0]], dtype=np.float32)])).tolist() == [2.0]


def _state(pid: int) -> str:
    """The process's state letter from /proc: T when stopped."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for_state(pid: int, stopped: bool, timeout_s: float = 30.0) -> None:
    # A signal reaches another process asynchronously: wait for it to land.
    deadline = time.monotonic() + timeout_s
    while (_state(pid) == "T") != stopped:
        assert time.monotonic() < deadline, f"process {pid} never {'stopped' if stopped else 'continued'}"
        time.sleep(0.01)


linux_pidfd = pytest.mark.skipif(
    not (hasattr(os, "pidfd_open") and Path("/proc/self/stat").exists()), reason="Linux pidfds and /proc"
)


@linux_pidfd
async def test_a_paused_child_is_stopped_until_resumed_and_pauses_nest(runner):
    r = runner()
    pid = r._process.pid
    r.pause()
    r.pause()
    _wait_for_state(pid, stopped=True)
    r.resume()
    assert _state(pid) == "T", "still held by the outer pause"
    r.resume()
    _wait_for_state(pid, stopped=False)
    assert (await r.predict([np.ones((2, 2), dtype=np.float32)])).tolist() == [2.0, 2.0]


@linux_pidfd
async def test_a_batch_waits_for_a_paused_child_and_the_pause_does_not_count_against_its_timeout(runner):
    r = runner()
    r.timeout_s = 0.3
    pid = r._process.pid
    r.pause()
    _wait_for_state(pid, stopped=True)
    task = asyncio.ensure_future(r.predict([np.ones((1, 3), dtype=np.float32)]))
    await until(lambda: r._busy, "the batch is in the pipe, its timeout running")
    await asyncio.sleep(1.0)  # three timeouts long, all of it paused
    assert not task.done(), "a paused child is waited for, not ended"
    assert r._process.is_alive()
    r.resume()
    assert (await task).tolist() == [3.0]


@linux_pidfd
async def test_a_runner_closed_while_its_child_is_paused_lets_it_finish_and_leave(runner, tmp_path):
    report = tmp_path / "report"
    r = runner(aside=functools.partial(process_scorers.Tally, str(report), 0.0))
    await r.predict_with([np.ones((2, 1), dtype=np.float32)], extra="positions")
    process = r._process
    r.pause()
    _wait_for_state(process.pid, stopped=True)
    await r.aclose()
    # Continued, then asked to leave: its aside finished (a stopped child would have been terminated).
    assert report.read_text() == "row-sums v3: 2"
    assert process.exitcode == 0
    r.pause()  # after close: nothing to stop, and no error
    r.resume()


def test_a_batch_paused_without_end_still_times_out():
    # A hung child paused at every batch of a champion under a backlog: the pause's credit is capped.
    class AlwaysPaused:
        def stopped_s(self) -> float:
            return time.monotonic() * 1000  # paused all the time, and more

    class Silent:
        def poll(self, timeout_s: float) -> bool:
            time.sleep(timeout_s)
            return False

    assert process_runner._answered(Silent(), 0.02, AlwaysPaused()) is False  # type: ignore[arg-type]


@linux_pidfd
async def test_a_runner_closed_while_something_else_stopped_its_child_continues_it_first(runner, tmp_path):
    report = tmp_path / "report"
    r = runner(aside=functools.partial(process_scorers.Tally, str(report), 0.0))
    await r.predict_with([np.ones((1, 1), dtype=np.float32)], extra="positions")
    process = r._process
    os.kill(process.pid, signal.SIGSTOP)  # not through its Pause: a race, or an operator
    _wait_for_state(process.pid, stopped=True)
    await r.aclose()
    assert report.read_text() == "row-sums v3: 1" and process.exitcode == 0, "continued, then it left politely"


@linux_pidfd
def test_a_stopped_child_is_ended_by_sigterm_not_left_for_sigkill(monkeypatch):
    monkeypatch.setattr(process_runner, "CLOSE_GRACE_S", 30.0)
    context = multiprocessing.get_context("spawn")
    parent, _child = context.Pipe()
    process = context.Process(target=time.sleep, args=(3600,), daemon=True)
    process.start()
    os.kill(process.pid, signal.SIGSTOP)
    _wait_for_state(process.pid, stopped=True)
    process_runner._stop(process, parent)
    assert process.exitcode == -signal.SIGTERM
