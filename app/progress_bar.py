"""Progress of a long command, on stderr, whatever the log level: a bar (tqdm) on a
terminal; elsewhere (CI, log files) a plain line every few seconds. Always a final line."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressBar:
    def __init__(self, total: int, label: str, *, every_s: float = 5.0) -> None:
        self.total = total
        self.label = label
        self.every_s = every_s
        self.started = time.monotonic()
        self.last_line = self.started
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="ev", unit_scale=True, smoothing=0.1)

    def _rate(self, done: int) -> tuple[float, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return done / elapsed, elapsed

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_line < self.every_s:
            return
        self.last_line = now
        rate, _ = self._rate(done)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        percent = 100 * done / max(self.total, 1)
        print(
            f"{self.label}: {done}/{self.total} ({percent:.0f}%, {rate:,.0f}/s, ETA {eta:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    def finish(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.close()
        rate, elapsed = self._rate(done)
        print(f"{self.label}: {done}/{self.total} ({rate:,.0f}/s, in {elapsed:.1f}s)", file=sys.stderr, flush=True)
