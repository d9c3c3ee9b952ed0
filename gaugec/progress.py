"""Progress on a terminal: one status line on stderr, redrawn in place, for anything that can run longer than a few
seconds (compiling a full-size model, the oracle, benchmarks, experiments).

Quiet unless stderr is a terminal: logs, pipes and CI see nothing. ``GAUGEC_PROGRESS=1`` draws anyway (to a file
or a pipe), ``GAUGEC_PROGRESS=0`` never draws. Bars nest: a compile inside a benchmark's loop shows as
``coverage [###.......] 12/289 llama | compile: discover 3.1 s`` on the one line.
"""
from __future__ import annotations

import os
import sys
import time

_open: list["Progress"] = []     # the bars being drawn, outermost first
_MIN_INTERVAL = 0.1              # seconds between redraws (the last state is always drawn)


def _enabled(stream) -> bool:
    flag = os.environ.get("GAUGEC_PROGRESS", "")
    if flag in ("0", "1"):
        return flag == "1"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """``with Progress("oracle", total=n) as bar: bar.update(1, note="batch 3")``; ``total`` None: a counter;
    ``quiet``: never draw (the other ranks of a distributed run)."""

    def __init__(self, desc: str, total: int | None = None, stream=None, quiet: bool = False):
        self.desc, self.total, self.done, self.note = desc, total, 0, ""
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.enabled = not quiet and _enabled(self.stream)
        self._drawn_at = 0.0
        self._width = 0

    def __enter__(self) -> "Progress":
        if self.enabled:
            _open.append(self)
            self._draw(force=True)
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1, note: str | None = None):
        self.done += n
        changed = note is not None and note != self.note
        if changed:
            self.note = note
        if self.enabled:
            self._draw(force=changed)      # a new stage is always shown; counts at most every 0.1 s

    def stage(self, note: str):
        """Name what runs now, without counting a step."""
        self.update(0, note)

    def text(self) -> str:
        parts = [self.desc]
        if self.total:
            filled = int(10 * min(self.done, self.total) / self.total)
            parts.append(f"[{'#' * filled}{'.' * (10 - filled)}] {self.done}/{self.total}")
        elif self.done:
            parts.append(str(self.done))
        if self.note:
            parts.append(self.note)
        parts.append(f"{time.perf_counter() - self.start:.1f} s")
        return " ".join(parts)

    def _draw(self, force: bool = False):
        now = time.perf_counter()
        if not force and now - self._drawn_at < _MIN_INTERVAL:
            return
        self._drawn_at = now
        line = " | ".join(bar.text() for bar in _open)
        root = _open[0] if _open else self
        pad = max(0, root._width - len(line))
        root._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def close(self):
        if not self.enabled or self not in _open:
            return
        self._draw(force=True)
        _open.remove(self)
        if not _open:       # the outermost bar: clear the line for whatever prints next
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def track(items, desc: str, total: int | None = None, label=None):
    """Iterate ``items`` with a bar; ``label(item)`` names the current item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(desc, total) as bar:
        for item in items:
            bar.stage(label(item) if label is not None else "")
            yield item
            bar.update(1)


def say(text: str):
    """``print(text)`` without tearing the status line: it is cleared, the text printed, the line drawn again."""
    if _open:
        root = _open[0]
        root.stream.write("\r" + " " * root._width + "\r")
        root.stream.flush()
        root._width = 0
    print(text, flush=True)
    if _open:
        _open[-1]._draw(force=True)
