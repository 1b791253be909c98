"""Progress for long loops, on tqdm (the project's one progress library).

On a terminal: a tqdm bar. Not on a terminal (a log file, SLURM, a pipe): no bar, but one
plain line every `every_s` seconds and one at the end, so a log shows where a job is:

    sft: 120/1000 (12%) · 3.1 it/s · ETA 0:04:44 · loss 1.2345

The first step of a jitted loop compiles: `compiling()` prints a line before it and
`compiled()` the measured time after, and the step is left out of the rate, so the ETA
is not the compile time multiplied by the number of steps. Only host 0 prints.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import jax


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """`update(n, **postfix)` after each unit of work; `close()` at the end (or use `with`)."""

    def __init__(self, desc: str, total: int, initial: int = 0, enabled: bool = True, unit: str = "it",
                 every_s: float = 30.0, stream=None):
        self.desc, self.total, self.n, self.unit = desc, int(total), int(initial), unit
        self.every_s, self.stream = float(every_s), sys.stderr if stream is None else stream
        self.enabled = enabled and jax.process_index() == 0
        self.bar = None
        if self.enabled and is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True)
        self._t0, self._n0, self._start = time.monotonic(), self.n, self.n  # the rate counts from _t0
        self._last_line = self._t0
        self._postfix: dict = {}
        self._compile_t: Optional[float] = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _say(self, msg: str) -> None:
        if self.enabled:
            if self.bar is not None:
                self.bar.write(msg, file=self.stream)
            else:
                print(msg, file=self.stream, flush=True)

    def compiling(self, what: str = "the step") -> None:
        self._compile_t = time.monotonic()
        self._say(f"{self.desc}: compiling {what} (first step) …")

    def compiled(self) -> float:
        """Ends the compiling step: prints its duration and restarts the rate after it."""
        dt = time.monotonic() - (self._compile_t or time.monotonic())
        self._say(f"{self.desc}: first step (compilation included) took {dt:.1f}s")
        self._compile_t = None
        return dt

    def rate(self) -> float:
        dt = time.monotonic() - self._t0
        return (self.n - self._n0) / dt if dt > 0 and self.n > self._n0 else 0.0

    def line(self) -> str:
        """The plain progress line (also what a log file gets)."""
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        r = self.rate()
        eta = f" · ETA {_clock((self.total - self.n) / r)}" if r > 0 and self.total else ""
        post = "".join(f" · {k} {v}" for k, v in self._postfix.items())
        return f"{self.desc}: {self.n}/{self.total}{pct} · {r:.3g} {self.unit}/s{eta}{post}"

    def update(self, n: int = 1, restart_rate: bool = False, **postfix) -> None:
        """`restart_rate`: this unit was the compiling one; the rate starts after it."""
        self.n += n
        self._postfix = {k: v for k, v in postfix.items() if v is not None}
        if restart_rate:  # the compile lines were just printed: the interval starts here too
            self._t0, self._n0 = time.monotonic(), self.n
            self._last_line = self._t0
        if self.bar is not None:
            if restart_rate:  # keep the slow first step out of tqdm's rate and ETA
                self.bar.n = self.bar.initial = self.n
                self.bar.start_t = self.bar.last_print_t = self.bar._time()
                self.bar.last_print_n = self.n
            else:
                self.bar.update(n)
            if self._postfix:
                self.bar.set_postfix(self._postfix, refresh=False)
            self.bar.refresh()
        elif self.enabled and time.monotonic() - self._last_line >= self.every_s:
            self._last_line = time.monotonic()
            self._say(self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n > self._start:
            self._say(self.line())
        self.enabled = False


def track(items, desc: str, total: Optional[int] = None, enabled: bool = True, unit: str = "it"):
    """Iterates `items` with a `Progress` (a bar on a terminal, plain lines otherwise)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with Progress(desc, len(items) if total is None else total, enabled=enabled, unit=unit) as bar:
        for x in items:
            yield x
            bar.update(1)
