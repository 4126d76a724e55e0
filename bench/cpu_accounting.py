"""Who used the machine's CPU while a run lasted: named processes, and everything else.

A latency tail on a 2-core machine is often not the worker's: a test suite, a second Python
process starting up, a build beside it. The demo (and any benchmark) names the processes it
runs, and this says how many cores each used and how many went to processes it did not name,
so a summary can say what its tail is made of instead of leaving a reader to guess.

    python -m bench.cpu_accounting --until PID --pid worker=PID --pid kafka=PID ...

samples ``/proc`` every quarter second until process ``--until`` exits, then prints one line.
Linux only; where ``/proc`` is missing it says so and exits 0 (the demo goes on without it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
SAMPLE_EVERY_S = 0.25


def busy_and_total(stat_text: str) -> tuple[int, int]:
    """Busy and total clock ticks of all CPUs together, from the ``cpu`` line of ``/proc/stat``."""
    fields = [int(x) for x in stat_text.splitlines()[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user and nice]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def process_ticks(stat_text: str) -> int:
    """utime + stime of one process (all its threads), from ``/proc/PID/stat``."""
    # The command name (field 2) is in parentheses and may hold spaces: split after its last ')'.
    after_name = stat_text[stat_text.rindex(")") + 2 :].split()
    return int(after_name[11]) + int(after_name[12])  # fields 14 and 15 of the whole line


@dataclass
class Usage:
    """Cores used over a span: by each named process, by this sampler, and by everything else."""

    seconds: float
    cores: int
    named: dict[str, float] = field(default_factory=dict)
    sampler: float = 0.0
    others: float = 0.0

    @property
    def idle(self) -> float:
        return max(0.0, self.cores - sum(self.named.values()) - self.sampler - self.others)

    def line(self) -> str:
        parts = [f"{name} {used:.2f}" for name, used in self.named.items()]
        return (
            f"CPU over {self.seconds:.1f}s ({self.cores} cores), in cores: {', '.join(parts)}, "
            f"other processes {self.others:.2f}, idle {self.idle:.2f}"
        )


class Sampler:
    def __init__(self, pids: dict[str, int], proc: Path = PROC) -> None:
        self.pids = pids
        self.proc = proc
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.own = os.getpid()

    def _read_ticks(self, pid: int) -> int | None:
        try:
            return process_ticks((self.proc / str(pid) / "stat").read_text())
        except (OSError, ValueError, IndexError):
            return None  # gone (its last reading stands) or not readable

    def sample(self) -> tuple[int, int]:
        for name, pid in {**self.pids, "(sampler)": self.own}.items():
            ticks = self._read_ticks(pid)
            if ticks is not None:
                self.first.setdefault(name, ticks)
                self.last[name] = ticks
        return busy_and_total((self.proc / "stat").read_text())

    def usage(self, start: tuple[int, int], end: tuple[int, int], seconds: float, cores: int) -> Usage:
        """``start`` and ``end`` are (busy, total) ticks of the whole machine."""
        busy, total = end[0] - start[0], max(1, end[1] - start[1])
        to_cores = cores / total  # ticks of all CPUs -> cores, whatever the tick rate
        used = {name: (self.last[name] - self.first[name]) * to_cores for name in self.last}
        sampler = used.pop("(sampler)", 0.0)
        named = {name: used.get(name, 0.0) for name in self.pids}
        others = max(0.0, busy * to_cores - sum(named.values()) - sampler)
        return Usage(seconds, cores, named, sampler, others)


def alive(pid: int, proc: Path = PROC) -> bool:
    try:
        state = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2 : state.rindex(")") + 3] != "Z"  # a zombie has exited


def parse_pid(text: str) -> tuple[str, int]:
    name, sep, pid = text.rpartition("=")
    if not sep or not name or not pid.isascii() or not pid.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PID")
    return name, int(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_accounting", description=__doc__.split("\n\n")[0])
    parser.add_argument("--until", type=int, required=True, help="sample until this process exits")
    parser.add_argument("--pid", type=parse_pid, action="append", default=[], help="NAME=PID of a process to name")
    args = parser.parse_args(argv)
    if not (PROC / "stat").exists():
        print("CPU use not measured: no /proc on this system", flush=True)
        return 0
    sampler = Sampler(dict(args.pid))
    started, start = time.monotonic(), sampler.sample()
    end = start
    while alive(args.until):
        time.sleep(SAMPLE_EVERY_S)
        end = sampler.sample()
    usage = sampler.usage(start, end, time.monotonic() - started, os.cpu_count() or 1)
    print(usage.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
