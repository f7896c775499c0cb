"""Progress for long stages: a rich bar on a terminal, plain lines at a steady interval everywhere else.

rich draws its bars only on a terminal, so ``lite-delta run > run.log 2>&1``, ``nohup``, CI and
captured notebook output would otherwise show nothing for many minutes. When standard error is not
a terminal (nor a Jupyter front end, which rich renders itself), :func:`progress_bar` returns a
:class:`PlainProgress` with the same small interface (``add_task``/``update``, a context manager)
that prints ``done / total``, the rate field (or items/s), elapsed time and an ETA every
``LITE_DELTA_PROGRESS_SECONDS`` seconds (default 30) and once at the end. The interval is kept by a
background thread, so a line comes even while one long item (a model load, a slow first batch) runs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console
from rich.errors import MarkupError
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

DEFAULT_INTERVAL_S = 30.0


def plain_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LITE_DELTA_PROGRESS_SECONDS", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress_bar(console: Console | None = None, disable: bool = False, *, columns=None):
    """A rich Progress on a terminal; otherwise plain progress lines on standard error."""
    console = console or Console(stderr=True)
    if not disable and not console.is_jupyter and not _isatty(console.file):
        return PlainProgress(console.file)
    columns = columns or (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, disable=disable)


def _isatty(stream) -> bool:
    """A real terminal, asked of the stream itself: rich's ``is_terminal`` also says yes under
    FORCE_COLOR (set in many CI setups for coloured logs), where a redrawn bar only litters the log."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    fields: dict[str, Any]
    started: float
    start_completed: float  # what was already done at the start (a resume): not part of the rate
    last_print: float = field(default=-1.0)
    finished_printed: bool = False


class PlainProgress:
    """The subset of rich's Progress the stages use, printing one line per interval instead of a bar.

    ``clock`` and ``heartbeat`` are for tests: with ``heartbeat`` false, lines come only from
    ``add_task``/``update`` (at most one per interval) and ``stop``."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None, clock=time.monotonic,
                 heartbeat: bool = True):
        self.stream = stream or sys.stderr
        self.interval = plain_interval() if interval is None else interval
        self.clock = clock
        self.tasks: list[_Task] = []
        self.heartbeat = heartbeat
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PlainProgress":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.heartbeat and self.interval > 0 and self._thread is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._beat, name="lite-delta-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Print each unfinished task's last state once and end the heartbeat; safe to call twice."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            for task in self.tasks:
                if not task.finished_printed:
                    self._print(task, final=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        with self._lock:
            task = _Task(description, total, completed, dict(fields), self.clock(), completed)
            self.tasks.append(task)
            self._print(task, final=_done(task))  # a resumed task that is already complete prints once
            return len(self.tasks) - 1

    def update(self, task_id: int, *, advance: float = 0, completed: float | None = None,
               total: float | None = None, description: str | None = None, **fields) -> None:
        with self._lock:
            task = self.tasks[task_id]
            if completed is not None:
                task.completed = completed
            task.completed += advance
            if total is not None:
                task.total = total
            if description is not None:
                task.description = description
            task.fields.update(fields)
            if _done(task):
                if not task.finished_printed:
                    self._print(task, final=True)
            elif self.clock() - task.last_print >= self.interval:
                self._print(task)

    def line(self, task: _Task) -> str:
        elapsed = self.clock() - task.started
        parts = [" ".join(x for x in (str(task.fields.get("label", "")), _plain(task.description)) if x) or "progress"]
        if task.total:
            parts.append(f"{task.completed:,.0f}/{task.total:,.0f} ({100 * task.completed / task.total:.0f}%)")
        else:
            parts.append(f"{task.completed:,.0f}")
        new = task.completed - task.start_completed  # a resume's head start is not this run's speed
        rate = _plain(str(task.fields.get("rate", "") or ""))
        if rate:
            parts.append(rate)
        elif new > 0 and elapsed > 0:
            parts.append(f"{new / elapsed:,.2f} items/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if task.total and task.completed < task.total:
            parts.append(f"ETA {_duration((task.total - task.completed) * elapsed / new)}" if new > 0 and elapsed > 0
                         else "ETA ?")
        return " · ".join(parts)

    def _beat(self) -> None:
        """Print every task that has been quiet for an interval, waking when the next one is due."""
        while True:
            with self._lock:
                now = self.clock()
                for task in self.tasks:
                    if not task.finished_printed and now - task.last_print >= self.interval:
                        self._print(task)
                due = [t.last_print + self.interval - now for t in self.tasks if not t.finished_printed]
            if self._stopped.wait(max(0.01, min(due, default=self.interval))):
                return

    def _print(self, task: _Task, final: bool = False) -> None:
        task.last_print = self.clock()
        task.finished_printed = task.finished_printed or final
        try:
            print(self.line(task), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken log must not stop the stage
            pass


def _done(task: _Task) -> bool:
    return task.total is not None and task.completed >= task.total


def _plain(text: str) -> str:
    """Rich markup (the bar's colours) as plain text; text that is not valid markup stays as it is."""
    try:
        return Text.from_markup(text).plain.strip()
    except MarkupError:
        return text.strip()
