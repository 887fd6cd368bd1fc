"""The progress bar of a download: bytes received, rate and time left, on an interactive terminal only."""

from __future__ import annotations

import contextlib
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def download_progress(url: str, total: int | None, stream=None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)``: a rich progress bar (bytes, rate, time left) of the download of
    ``url`` on ``stream`` (default stderr) when it is an interactive terminal, else a no-op."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
    )

    name = Path(urllib.parse.urlparse(url).path).name or url
    columns = (TextColumn("downloading [bold]{task.description}[/bold]"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)
