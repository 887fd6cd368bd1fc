"""The short block ``metarec fit`` prints before training: where the run goes, what data and split it
uses, what is trained and how.

:func:`header_rows` builds the rows (label, text) from the built data module, learner and trainer, so the
counts are the split's own; :func:`print_run_header` prints them on rank zero, as a rich table on an
interactive terminal and as plain ``label  text`` lines otherwise (logs, pipes, CI).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig

from metarec.data.scenarios import VAL

TITLE = "metarec fit"


def _n(x: int) -> str:
    return f"{int(x):,}"


def _count(x: int, noun: str) -> str:
    """``1 user``, ``2 users``."""
    return f"{_n(x)} {noun}{'' if int(x) == 1 else 's'}"


def scenario_counts(split) -> dict[str, dict[str, int]]:
    """Per evaluation scenario of ``split`` (a ``ColdStartSplit``): its users (one fixed episode each),
    the episodes and the distinct items in their supports and queries."""
    out = {}
    for name, tasks in split.episodes.items():
        if name == VAL:
            continue
        items: set[int] = set()
        for t in tasks:
            items.update(int(i) for i in t.support_items)
            items.update(int(i) for i in t.query_items)
        out[name] = {"users": len({int(t.user) for t in tasks}), "episodes": len(tasks), "items": len(items)}
    return out


def trainable_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def header_rows(cfg: DictConfig, run_dir: Path, dm, learner, trainer=None, resumed_from: Any = None
                ) -> list[tuple[str, str]]:
    """The header's rows. ``dm``: the set-up ``ColdStartDataModule``; ``learner``: the built learner;
    ``trainer``: the Lightning trainer (for the device it chose), else the config's accelerator."""
    ds, split = dm.dataset, dm.split
    users = split.manifest["users"]
    feedback = ("implicit, " if dm.cfg.negatives.enabled else "explicit ratings, ") + dm.loss
    rows = [("run", str(run_dir) + (f" (resumed from {Path(str(resumed_from)).name})" if resumed_from else ""))]
    rows.append(("data", f"{cfg.data.source}: {_n(ds.n_users)} users, {_n(ds.n_items)} items, "
                         f"{_n(len(ds.ratings))} interactions ({feedback})"))
    rows.append(("split", f"{_n(len(users['train']))} train users, {_n(len(users['val']))} validation users, "
                          f"{_n(len(users['new']))} new (test) users; {_n(int(split.new_item_mask.sum()))} new "
                          f"items of {_n(ds.n_items)}"))
    for name, c in scenario_counts(split).items():
        rows.append((f"  {name}", f"{_count(c['users'], 'user')}, {_count(c['items'], 'item')}, "
                                  f"{_count(c['episodes'], 'episode')}"))
    rows.append(("model", f"{cfg.model.name}, {_n(trainable_parameters(learner))} trainable parameters"))
    executor = getattr(learner, "executor", None)
    how = [f"executor {cfg.learner.get('executor', '-')} ({type(executor).__name__})"] if executor is not None else []
    if "scope" in cfg.learner:
        how.append(f"scope {cfg.learner.scope}")
    label = str((cfg.get("choices") or {}).get("learner") or cfg.learner.name)
    name = label if label == cfg.learner.name else f"{label} ({cfg.learner.name})"
    rows.append(("learner", name + (f"; {', '.join(how)}" if how else "")
                 + ("" if learner.needs_training else "; not trained (fitted from the training ratings)")))
    if trainer is not None:
        device = f"{trainer.strategy.root_device}"
        if trainer.world_size > 1:
            device += f" x {trainer.world_size} processes ({type(trainer.strategy).__name__})"
        precision = str(trainer.precision)
    else:
        device, precision = str(cfg.trainer.accelerator), str(cfg.trainer.precision)
    rows.append(("device", f"{device}, precision {precision}"))
    rows.append(("seed", f"{cfg.seed} (split seed {dm.split_config.seed})"))
    return rows


def render_plain(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join([TITLE, *(f"  {k:<{width}}  {v}" for k, v in rows)])


def print_run_header(rows: list[tuple[str, str]], stream: TextIO | None = None) -> None:
    """Print ``rows``: a rich table when ``stream`` (default stdout) is an interactive terminal."""
    stream = stream or sys.stdout
    if not stream.isatty() or hasattr(stream, "rich_proxied_file"):  # a file, or under compare's progress bar
        print(render_plain(rows), file=stream, flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    console = Console(file=stream)
    console.print(f"[bold]{TITLE}[/bold]")
    console.print(table)
