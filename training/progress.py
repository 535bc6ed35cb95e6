"""The training status line: steps, loss, pairs/s, elapsed, ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """One status line: steps, loss, pairs/s, elapsed, ETA (\\r-updated on a terminal,
    a line every ``every_s`` otherwise)."""

    def __init__(self, total_s: float, total_steps: int | None, stream=None, every_s: float = 15.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total_s = total_s
        self.total_steps = total_steps
        self.every_s = every_s if not self.tty else 0.5
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, step: int, loss: float, pairs_per_s: float, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.t0
        eta = self.total_s - elapsed
        if self.total_steps:
            rate = step / elapsed if elapsed > 0 else 0
            eta = min(eta, (self.total_steps - step) / rate) if rate > 0 else eta
        frac = min(1.0, elapsed / self.total_s) if self.total_s else 0.0
        if self.total_steps:
            frac = max(frac, step / self.total_steps)
        bar = "#" * int(frac * 20)
        line = (f"train [{bar:<20}] step {step}" + (f"/{self.total_steps}" if self.total_steps else "")
                + f" loss {loss:.4f} {pairs_per_s:.0f} pairs/s elapsed {_fmt(elapsed)} ETA {_fmt(max(0, eta))}"
                + (f" {extra}" if extra else ""))
        if self.tty:
            self.stream.write("\r" + line.ljust(110))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(s: float) -> str:
    s = int(s)
    return f"{s // 60:d}:{s % 60:02d}"
