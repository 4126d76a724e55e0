"""bench.cpu_accounting: cores used by named processes and by everything else, from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cpu_accounting import Sampler, busy_and_total, parse_pid, process_ticks

STAT = "cpu  100 10 50 800 40 0 0 0 0 0\ncpu0 50 5 25 400 20 0 0 0 0 0\n"


def test_busy_ticks_leave_out_idle_and_iowait():
    assert busy_and_total(STAT) == (160, 1000)


def test_a_process_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    fields = " ".join(str(n) for n in range(3, 53))  # field 3 (state) onwards; utime is 14, stime 15
    assert process_ticks(f"42 (a (weird) name) {fields}") == 14 + 15


def fake_proc(root: Path, busy: int, total: int, ticks: dict[int, int]) -> None:
    idle = total - busy
    (root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\n")
    for pid, used in ticks.items():
        (root / str(pid)).mkdir(exist_ok=True)
        fields = ["S"] + ["0"] * 10 + [str(used), "0"] + ["0"] * 30
        (root / str(pid) / "stat").write_text(f"{pid} (p) {' '.join(fields)}\n")


def test_cores_are_split_between_named_processes_the_sampler_and_the_rest(tmp_path):
    own = os.getpid()
    fake_proc(tmp_path, busy=1000, total=4000, ticks={10: 100, 20: 50, own: 5})
    sampler = Sampler({"worker": 10, "kafka": 20, "gone": 99}, proc=tmp_path)
    start = sampler.sample()
    # Over the span, 2 cores: 2,000 ticks in all, 1,000 busy; the worker 500, kafka 100, the sampler 20.
    fake_proc(tmp_path, busy=2000, total=6000, ticks={10: 600, 20: 150, own: 25})
    usage = sampler.usage(start, sampler.sample(), seconds=10.0, cores=2)
    assert usage.named == {"worker": 0.5, "kafka": 0.1, "gone": 0.0}
    assert usage.sampler == pytest.approx(0.02)
    assert usage.others == pytest.approx(0.38)
    assert usage.idle == pytest.approx(1.0)
    assert usage.line() == (
        "CPU over 10.0s (2 cores), in cores: worker 0.50, kafka 0.10, gone 0.00, other processes 0.38, idle 1.00"
    )


def test_a_process_that_exits_keeps_its_last_reading(tmp_path):
    fake_proc(tmp_path, busy=0, total=1000, ticks={10: 0})
    sampler = Sampler({"producer": 10}, proc=tmp_path)
    start = sampler.sample()
    fake_proc(tmp_path, busy=300, total=2000, ticks={10: 200})
    sampler.sample()
    (tmp_path / "10" / "stat").unlink()
    usage = sampler.usage(start, sampler.sample(), seconds=1.0, cores=1)
    assert usage.named == {"producer": 0.2}


@pytest.mark.parametrize("text", ["worker", "=12", "worker=", "worker=x", "worker=١٢"])
def test_a_pid_argument_is_name_equals_digits(text):
    with pytest.raises(Exception, match="expected NAME=PID"):
        parse_pid(text)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")
def test_the_command_samples_until_the_process_exits_and_prints_one_line():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.6)"])
    result = subprocess.run(
        [sys.executable, "-m", "bench.cpu_accounting", "--until", str(sleeper.pid), "--pid", f"sleeper={sleeper.pid}"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    sleeper.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("CPU over ") and "sleeper " in result.stdout and "other processes" in result.stdout
