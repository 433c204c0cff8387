"""A progress line for long work: count/total, rate and ETA, redrawn in place on a terminal and
printed every few seconds otherwise (so CI logs stay short)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress(total, "vehicle", unit="img") as bar: bar.update(1)``."""

    def __init__(self, total: int | None, label: str, unit: str = "it", stream: TextIO | None = None,
                 enabled: bool = True, interval: float | None = None) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.1 if self.tty else 5.0)
        self.count = 0
        self.start = time.monotonic()
        self._last = self.start

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw(now)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def _draw(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            line = f"{self.label}: {self.count}/{self.total} {self.unit} ({100 * self.count // self.total}%)"
            if rate > 0 and not final:
                line += f", {rate:.0f} {self.unit}/s, ETA {max(0.0, (self.total - self.count) / rate):.0f} s"
        else:
            line = f"{self.label}: {self.count} {self.unit}"
        if final or not self.total:
            line += f", {rate:.0f} {self.unit}/s, {elapsed:.1f} s"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and (self.tty or self.count):
            self._draw(time.monotonic(), final=True)
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
