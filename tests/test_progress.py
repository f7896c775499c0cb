"""Plain progress lines for logs (stderr not a terminal): interval, ETA, resume, final line, markup.

Pure logic, so a fake clock drives it; the stages' real output is checked in the generate and
train stage tests."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.progress import Progress

from lite_delta.progress import PlainProgress, plain_interval, progress_bar


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain(interval=10.0, heartbeat=False):
    clock, stream = Clock(), io.StringIO()
    return PlainProgress(stream, interval=interval, clock=clock, heartbeat=heartbeat), clock, stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_one_line_at_the_start_then_at_most_one_per_interval():
    bar, clock, stream = plain(interval=10)
    with bar:
        task = bar.add_task("generate m.gguf", total=100, rate="")
        for t in range(1, 26):  # one item a second for 25 s
            clock.now += 1
            bar.update(task, advance=1, rate=f"{t * 8} tok/s")
        assert lines(stream) == [
            "generate m.gguf · 0/100 (0%) · elapsed 0s · ETA ?",
            "generate m.gguf · 10/100 (10%) · 80 tok/s · elapsed 10s · ETA 1m30s",
            "generate m.gguf · 20/100 (20%) · 160 tok/s · elapsed 20s · ETA 1m20s",
        ]
    assert lines(stream)[-1] == "generate m.gguf · 25/100 (25%) · 200 tok/s · elapsed 25s · ETA 1m15s", \
        "stopping early prints where it stopped"


def test_the_final_line_comes_once():
    bar, clock, stream = plain(interval=1000)
    with bar:
        task = bar.add_task("eval gsm8k", total=4)
        for _ in range(4):
            clock.now += 2
            bar.update(task, advance=1)
        bar.update(task, completed=4)  # the train callback sets the count again at the end
    bar.stop()
    done = [line for line in lines(stream) if "4/4 (100%)" in line]
    assert done == ["eval gsm8k · 4/4 (100%) · 0.50 items/s · elapsed 8s"], lines(stream)
    assert len(lines(stream)) == 2


def test_a_resume_head_start_is_not_counted_in_the_rate_or_eta():
    bar, clock, stream = plain(interval=10)
    with bar:
        task = bar.add_task("eval mmlu", total=100, completed=50)
        clock.now += 10
        bar.update(task, advance=10)  # 10 new items in 10 s: 1/s, 40 left
    assert lines(stream)[0] == "eval mmlu · 50/100 (50%) · elapsed 0s · ETA ?"
    assert lines(stream)[1] == "eval mmlu · 60/100 (60%) · 1.00 items/s · elapsed 10s · ETA 40s"


def test_an_already_complete_resume_prints_one_line():
    bar, _, stream = plain()
    with bar:
        bar.add_task("generate m.gguf", total=8, completed=8, rate="")
    assert lines(stream) == ["generate m.gguf · 8/8 (100%) · elapsed 0s"]


def test_rich_markup_is_stripped_and_bad_markup_kept():
    bar, clock, stream = plain(interval=0)
    with bar:
        task = bar.add_task("", total=10, completed=0, label="train")
        clock.now += 4
        bar.update(task, completed=2, description="loss 0.6931  margin +0.001  [yellow]! loss flat[/yellow]")
        clock.now += 4
        bar.update(task, completed=4, description="see [/oops] here", rate="[bold]12 tok/s[/bold]")
    assert lines(stream)[1] == "train loss 0.6931  margin +0.001  ! loss flat · 2/10 (20%) · 0.50 items/s · " \
                               "elapsed 4s · ETA 16s"
    assert lines(stream)[2].startswith("train see [/oops] here · 4/10 (40%) · 12 tok/s · elapsed 8s")
    assert "[yellow]" not in stream.getvalue() and "\x1b[" not in stream.getvalue()


def test_no_total_prints_the_count_without_eta():
    bar, clock, stream = plain(interval=0)
    with bar:
        task = bar.add_task("pairs", total=None)
        clock.now += 2
        bar.update(task, advance=3)
    assert lines(stream)[1] == "pairs · 3 · 1.50 items/s · elapsed 2s"


def test_heartbeat_prints_while_no_item_finishes_and_stops_with_the_bar():
    stream = io.StringIO()
    bar = PlainProgress(stream, interval=0.05)  # the real clock and the timer thread
    with bar:
        bar.add_task("generate slow.gguf", total=3)
        time.sleep(0.4)  # one long first item: no update comes
    quiet = len(lines(stream))
    assert quiet >= 4, lines(stream)
    pattern = r"generate slow\.gguf · 0/3 \(0%\) · elapsed \d+s( · ETA \?)?"
    assert all(re.fullmatch(pattern, x) for x in lines(stream)), lines(stream)
    time.sleep(0.2)
    assert len(lines(stream)) == quiet, "no line after stop"


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("LITE_DELTA_PROGRESS_SECONDS", "0")
    assert plain_interval() == 0
    monkeypatch.setenv("LITE_DELTA_PROGRESS_SECONDS", "2.5")
    assert plain_interval() == 2.5
    monkeypatch.setenv("LITE_DELTA_PROGRESS_SECONDS", "soon")
    assert plain_interval() == 30
    monkeypatch.delenv("LITE_DELTA_PROGRESS_SECONDS")
    assert plain_interval() == 30


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("force_color", [None, "1"])
def test_plain_lines_when_stderr_is_not_a_terminal(monkeypatch, force_color):
    from rich.console import Console

    if force_color:  # set in many CI setups for coloured logs: still no terminal to redraw a bar on
        monkeypatch.setenv("FORCE_COLOR", force_color)
    else:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert isinstance(progress_bar(Console(file=io.StringIO())), PlainProgress)
    assert isinstance(progress_bar(Console(file=FakeTTY())), Progress)
    silent = progress_bar(Console(file=io.StringIO()), disable=True)
    assert isinstance(silent, Progress) and silent.disable
