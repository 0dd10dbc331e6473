"""Progress of long commands on stderr: a bar redrawn in place on a terminal, plain lines at most
every ``every`` seconds otherwise (a log or a CI job gets a few honest lines, not thousands of
carriage returns). Library code takes a plain ``progress(done, total)`` callback and never
imports this module; the CLI does."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 30
REDRAW_SECONDS = 0.2


class Progress:
    """``update(done)`` as work completes, ``finish()`` once at the end (prints the last state)."""

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "",
        *,
        stream: TextIO | None = None,
        every: float = 10.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit = label, max(total, 0), unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = REDRAW_SECONDS if self.tty else every
        self.clock = clock
        self.started = clock()
        self.done = 0
        self._shown_at: float | None = None
        self._shown_done: int | None = None
        self._finished = False

    def __call__(self, done: int, total: int | None = None) -> None:
        """The ``progress(done, total)`` callback the library functions take."""
        if total is not None:
            self.total = total
        self.update(done)

    def update(self, done: int) -> None:
        self.done = min(done, self.total) if self.total else done
        now = self.clock()
        if self._shown_at is None or now - self._shown_at >= self.every:
            self._show(now)

    def finish(self, note: str = "") -> None:
        if self._finished:
            return
        self._finished = True
        if not self.tty and not note and self._shown_done == self.done:
            return  # the last line printed is the final state already: not twice in a log
        self._show(self.clock(), note)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, now: float, note: str = "") -> None:
        self._shown_at, self._shown_done = now, self.done
        elapsed = now - self.started
        share = self.done / self.total if self.total else 1.0
        percent = f"{int(share * 100)}%"  # rounded down: 100% only when all is done (608/611 is 99%)
        count = f"{self.done:,}/{self.total:,}{' ' + self.unit if self.unit else ''}"
        tail = f"{count}, {elapsed:.0f}s{'; ' + note if note else ''}"
        if self.tty:
            filled = int(round(share * BAR_WIDTH))
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r{self.label} [{bar}] {percent:>4} {tail}\033[K")
        else:
            self.stream.write(f"{self.label}: {percent} ({tail})\n")
        self.stream.flush()
