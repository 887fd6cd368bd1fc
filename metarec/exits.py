"""How a command ends. SIGTERM (a scheduler, ``kill``) and SIGINT (Ctrl-C) become an
:class:`Interrupted` exception in the main thread, so every ``finally`` runs (run-folder locks are
released, temp files removed) and the command line prints one line saying how to continue, then exits
with 128 + the signal number (143, 130). Python warnings are held until the command ends, so a user
error or an interrupt is one line alone (the held warnings are dropped then).

``Interrupted`` derives from ``BaseException`` (no ``except Exception`` swallows it) but not from
``KeyboardInterrupt``, which Lightning's trainer turns into ``sys.exit(1)``. Inside ``Trainer.fit``
Lightning's own SIGTERM handler calls the one installed here after its own, so the exception passes
through Lightning's clean-up (loggers finalised, callbacks told) like any other.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the signals the handlers below saw in this process


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; ``run_dir`` / ``resumable`` say where a run stood (set by ``fit``),
    ``hint`` how to continue (set by the command that knows)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.run_dir: Path | None = None
        self.resumable = False
        self.hint: str | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def received() -> int | None:
    """The first signal handled since :func:`signals_raise` was entered (``None`` if none)."""
    return _received[0] if _received else None


@contextmanager
def signals_raise(early_line: Callable[[int], str] | None = None) -> Iterator[None]:
    """While inside: SIGTERM and SIGINT raise :class:`Interrupted` in the main thread. During an import
    they end the process at once with ``early_line(signum)`` on stderr if it holds no run folder, else
    they wait for the import to end (SIGALRM times the retries). A second signal stops the process at
    once (the signal's default action). Forked children (DataLoader workers) keep the default
    behaviour. Previous handlers are restored on exit; outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid = os.getpid()

    def raise_when_safe(frame) -> None:
        # an exception inside an import leaves half-initialised modules behind (numpy then fails with
        # RecursionError on its next use): while no run folder is held there is nothing to clean up, so
        # end at once; else wait until the import is over, checking every 50 ms
        if _importing(frame):
            if early_line is not None and not _runs_held():
                print(early_line(_received[0]), file=sys.stderr, flush=True)
                os._exit(128 + _received[0])
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise Interrupted(_received[0])

    def handler(signum, frame) -> None:
        if os.getpid() != main_pid:  # a forked worker: what Python does by default
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return _default(signum)
        if _received:  # asked twice: stop now
            return _default(signum)
        _received.append(signum)
        raise_when_safe(frame)

    def retry(signum, frame) -> None:
        if _received and os.getpid() == main_pid:
            raise_when_safe(frame)

    previous = {s: signal.getsignal(s) for s in (*SIGNALS, signal.SIGALRM)}
    _received.clear()
    for s in SIGNALS:
        signal.signal(s, handler)
    signal.signal(signal.SIGALRM, retry)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _received.clear()  # later calls of the library (outside a command) see no signal
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _runs_held() -> bool:
    runs = sys.modules.get("metarec.runs")  # not imported yet: no run folder can be held
    return runs is not None and runs.RunLock.held > 0


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _default(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextmanager
def warnings_at_end() -> Iterator[list]:
    """Python warnings raised while inside are shown on leaving (after the command's own output); the
    caller empties the yielded list when the command ends with a user error or an interrupt."""
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield caught
    finally:
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def rerun_hint(command: str, argv: list[str]) -> str:
    """How to continue a command interrupted outside a run: ``compare`` and ``tune`` keep what finished
    and pick up the rest when called again."""
    again = shlex.join(["metarec", *argv])
    if command in ("compare", "tune"):
        return f"finished runs are kept; to continue, run the same command again: {again}"
    if command == "fit":
        return f"nothing was written; to start again: {again}"
    return "nothing was written"


def fit_resume_hint(fit_args: list[str], named: bool, run_dir: Path | None, resumable: bool) -> str:
    """How to continue an interrupted ``metarec fit FIT_ARGS``: the exact command to run. ``named``: the
    run has a ``run.name`` (then ``resume=last`` finds exactly it, else the folder is named)."""
    from metarec.runs import is_finished

    kept = [a for a in fit_args if a.split("=", 1)[0].strip() not in ("resume", "run.resume")]
    again = ["metarec", "fit", *kept]
    if run_dir is None:
        return f"nothing was written; to start again: {shlex.join(again)}"
    if is_finished(run_dir):
        return f"run {run_dir} had finished"
    if not resumable:
        return f"run {run_dir} stopped before its first checkpoint; to start again: {shlex.join(again)}"
    resume = "resume=last" if named else f"run.resume={run_dir}"
    return f"run {run_dir} is resumable: {shlex.join([*again, resume])}"
