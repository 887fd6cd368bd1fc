"""What ``metarec tune`` leaves in its folder, and how ``metarec compare --tuned`` reads it back.

- ``trials.csv`` / ``trials.md``: every trial of every study in ``study.db`` (learner, trial, state,
  value, duration, the chosen settings as overrides, a note: why a trial was pruned or re-run);
- ``best/<learner>.yaml``: the best trial's settings as ``key=value`` overrides, written once the
  learner's budget of trials is spent (a learner with an empty search space gets its defaults).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

import yaml

from metarec.errors import ConfigError, DataError
from metarec.runs import atomic_write_text
from metarec.tune_space import as_overrides, searchable

BEST = "best"
TRIALS_CSV = "trials.csv"
TRIALS_MD = "trials.md"
COLUMNS = ("learner", "trial", "state", "value", "duration_s", "params", "note")


def trial_rows(studies: Iterable[tuple[str, list]]) -> list[dict[str, Any]]:
    """One row per trial of ``(learner, optuna FrozenTrials)`` pairs, in trial order."""
    rows = []
    for learner, trials in studies:
        for t in sorted(trials, key=lambda t: t.number):
            duration = t.duration.total_seconds() if t.duration is not None else None
            rows.append({
                "learner": learner, "trial": t.number, "state": t.state.name.lower(),
                "value": t.value if t.value is not None else None,
                "duration_s": f"{duration:.1f}" if duration is not None else None,
                "params": " ".join(as_overrides(t.params)),
                "note": str(t.user_attrs.get("note", "")),
            })
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_tables(out: Path, rows: list[dict[str, Any]], metric_of: dict[str, str]) -> list[Path]:
    """``trials.csv`` (every column, values at full precision) and ``trials.md``, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS[:4], "metric", *COLUMNS[4:]], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "metric": metric_of.get(r["learner"], "")})
    md = ["# metarec tune: trials", "", "Values are validation metrics (lower is better): "
          + (", ".join(f"{l}: `{m}`" for l, m in metric_of.items()) or "none"), "",
          "| learner | trial | state | value | duration (s) | params | note |", "|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        params = " ".join(f"`{p}`" for p in r["params"].split()) if r["params"] else ""
        md.append(f"| {r['learner']} | {r['trial']} | {r['state']} | {_cell(r['value'])} | {_cell(r['duration_s'])} "
                  f"| {params} | {r['note'].replace('|', '/')} |")
    paths = [out / TRIALS_CSV, out / TRIALS_MD]
    atomic_write_text(paths[0], buf.getvalue())
    atomic_write_text(paths[1], "\n".join(md) + "\n")
    return paths


def write_best(out: Path, learner: str, record: dict[str, Any]) -> Path:
    """``best/<learner>.yaml``: ``record`` (learner, metric, value, trial, trials, seed, split_hash,
    base_overrides, overrides) with a header saying what it is."""
    path = out / BEST / f"{learner}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if record["trials"] and record["value"] is None:
        head = (f"# metarec tune: none of the {record['trials']} trials for learner={learner} finished (all pruned or "
                "diverged); its defaults.\n")
    elif record["trials"]:
        head = (f"# metarec tune: the best of {record['trials']} trials for learner={learner} (trial {record['trial']}, "
                f"validation {record['metric']} = {record['value']:.4f}, lower is better).\n")
    else:
        head = f"# metarec tune: learner={learner} has an empty search space; its defaults, no trials.\n"
    head += "# `metarec compare --tuned DIR` adds `overrides` to this learner's runs.\n"
    atomic_write_text(path, head + yaml.safe_dump(record, sort_keys=False))
    return path


def tuned_learners(folder: str | Path) -> list[str]:
    """The learners with a tuned config in ``folder/best`` (sorted)."""
    best = Path(folder) / BEST
    if not best.is_dir():
        raise DataError(f"--tuned {folder}: no {BEST}/ folder there (made by `metarec tune --out {folder}` once a "
                        "learner's trials are done)")
    return sorted(p.stem for p in best.glob("*.yaml"))


def load_tuned(folder: str | Path, learners: list[str]) -> dict[str, list[str]]:
    """``{learner: its best overrides}`` from ``folder/best/<learner>.yaml`` for each of ``learners``."""
    known = tuned_learners(folder)
    out = {}
    for learner in learners:
        path = Path(folder) / BEST / f"{learner}.yaml"
        if learner not in known:
            raise DataError(f"--tuned {folder}: no tuned config for learner {learner!r} (tuned: "
                            f"{', '.join(known) or 'none'}); run `metarec tune --learners {learner} --out {folder}`")
        try:
            record = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise DataError(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from None
        overrides = record.get("overrides") if isinstance(record, dict) else None
        if (not isinstance(record, dict) or record.get("learner") != learner or not isinstance(overrides, list)
                or not all(isinstance(o, str) and "=" in o for o in overrides)):
            raise DataError(f"{path}: not a tuned config of learner {learner!r} (expected learner: {learner} and "
                            "overrides: a list of key=value)")
        for o in overrides:
            if not searchable(o.split("=", 1)[0].strip()):
                raise ConfigError(f"{path}: the override {o!r} is not a setting tuning may choose")
        out[learner] = list(overrides)
    return out
