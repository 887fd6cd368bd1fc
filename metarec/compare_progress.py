"""Feedback across a ``metarec compare`` grid: runs done / total, the run under way and an ETA.

On an interactive terminal a rich progress bar stays at the bottom (runs done / total, elapsed, ETA,
the run under way) and the line of each finished run is printed above it. Anywhere else (a CI log, a
batch job's output file, a pipe) there is no bar: the line of each finished run ends with the ETA.

The ETA is the mean time of the runs trained by this call times the runs still to train; runs finished
by an earlier call count as done and take no time.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text


def format_eta(seconds: float) -> str:
    """``3725`` -> ``1:02:05`` (h:mm:ss, as rich shows times)."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _EtaColumn(ProgressColumn):
    """``ETA h:mm:ss`` counting down from the estimate made when the last run ended; ``ETA –`` before one."""

    def render(self, task) -> Text:
        end = task.fields.get("end")
        if end is None:
            return Text("ETA –" if not task.finished else "", style="progress.remaining")
        return Text(f"ETA {format_eta(end - time.monotonic())}", style="progress.remaining")


class GridProgress:
    """Progress over ``total`` runs of which ``done`` were finished before; use as a context manager.

    ``bar``: a rich bar on ``console`` (``None``: when ``console`` is an interactive terminal);
    ``echo`` prints the line of each finished run."""

    def __init__(self, total: int, done: int, echo: Callable[[str], None] = print, bar: Optional[bool] = None,
                 console: Optional[Console] = None) -> None:
        self.total, self.done, self.echo = total, done, echo
        self.todo = total - done  # runs this call trains
        self.trained: list[float] = []  # seconds of each run trained by this call
        console = console or Console()
        if bar is None:
            bar = console.is_terminal and not console.is_dumb_terminal
        self.progress: Optional[Progress] = None
        if bar:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("runs"), TimeElapsedColumn(), _EtaColumn(), console=console)
            self.task = self.progress.add_task("compare", total=total, completed=done)

    @property
    def shows_bar(self) -> bool:
        return self.progress is not None

    def __enter__(self) -> "GridProgress":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def eta(self) -> Optional[float]:
        """Seconds until the grid is done: mean seconds per trained run x runs left to train."""
        if not self.trained:
            return None
        return sum(self.trained) / len(self.trained) * (self.todo - len(self.trained))

    def starting(self, what: str) -> None:
        """The run ``what`` (e.g. ``maml seed 1``) starts."""
        if self.progress is not None:
            self.progress.update(self.task, description=what)

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self.echo(line)

    def reused(self, line: str) -> None:
        """A run finished by an earlier call (already counted as done)."""
        self._say(line)

    def finished(self, line: str, seconds: float) -> None:
        """A run trained by this call took ``seconds``; ``line`` says which."""
        self.trained.append(seconds)
        eta = self.eta()
        if self.progress is not None:
            end = time.monotonic() + eta if eta else None
            self.progress.update(self.task, advance=1, end=end, description="compare")
            self._say(line)
        else:
            self._say(f"{line}; ETA {format_eta(eta)}" if eta else line)
