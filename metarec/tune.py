"""``metarec tune``: per learner, an Optuna study (TPE sampler, median pruning) over the learner's search
space (``search/<learner>.yaml``, :mod:`metarec.tune_space`), scored on the validation users only.

Everything lives in one output folder ``DIR``:

- ``DIR/study.db``: the studies (SQLite), one per learner option, named after it; a later call with the
  same folder continues them: ``--trials N`` is each learner's total budget, trials already finished or
  pruned count, and a trial that was running when the process died is marked failed and re-run with
  the same settings;
- ``DIR/split_manifest.json``: the split every trial uses (made by the first call);
- ``DIR/trials/<learner>/config.yaml`` (the study's base config) and ``trial-NNN/`` (its config and
  Lightning logs; checkpoints are deleted once a trial ends); no run folder is made under ``runs/``;
- ``DIR/trials.csv``, ``DIR/trials.md`` and ``DIR/best/<learner>.yaml`` (:mod:`metarec.tune_outputs`).

A trial trains like ``metarec fit`` (the same ``assembly.build`` and Lightning trainer, with its
checkpointing and early stopping) and is scored by the best validation value of the metric ``fit``
monitors (validation MAE; the validation loss under implicit feedback). It never tests: the
trial's data module holds no test episodes, and asking it for a test loader is an error. Every trial
of a study uses the study's seed (``seed=``, default 0), so trials differ only in their settings.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from metarec.errors import ConfigError, MetarecError
from metarec.tune_outputs import trial_rows, write_best, write_tables
from metarec.tune_space import Param, as_overrides, format_value, load_space
from metarec.tune_trial import run_trial

STUDY_DB = "study.db"
MANIFEST = "split_manifest.json"
TRIALS = "trials"
LOCK = ".tune.lock"
DEFAULT_TRIALS = 20
HELP = f"""\
Per learner, an Optuna study over search/<learner>.yaml (on the config search path: a --config-path
folder may replace a learner's space), scored by the validation metric `metarec fit` monitors
(val/user_cold/mae; val/user_cold/loss under implicit feedback), on the validation users only: no trial tests.

  DIR/study.db             the studies (SQLite): repeat the call to continue after an interruption;
                           --trials N is each learner's total (finished and pruned trials count; a
                           trial cut off by a kill is re-run with the same settings)
  DIR/trials.csv, .md      every trial: learner, trial, state, value, duration, settings, note
  DIR/best/<learner>.yaml  the best settings, once the learner's N trials are done (an empty search
                           space gives the defaults); `metarec compare --tuned DIR` runs them
  DIR/trials/<learner>/    each trial's config and Lightning logs (no run folders under runs/)

Every trial uses the same seed (seed=, default 0) and the split DIR/{MANIFEST}. Overrides apply to
every trial; an override of a searched key fixes it, e.g.
  metarec tune --out runs/tune --learners maml global amortised --trials 20 data=movielens100k
"""
_FORBIDDEN = {
    "learner": "use --learners; the searched settings are in search/<learner>.yaml",
    "run": "--out DIR holds everything tuning writes",
    "data.manifest": f"the split is DIR/{MANIFEST}",
    "data.eval_support_sizes": "tuning never tests",
}


@dataclass
class TuneSpec:
    out: Path
    learners: list[str]
    trials: int = DEFAULT_TRIALS
    overrides: list[str] = field(default_factory=list)
    config_path: list[Path] = field(default_factory=list)


@dataclass
class Study:
    """One learner's study: its searched parameters (user overrides fix the others) and base config."""

    learner: str
    params: list[Param]
    base: Any  # the validated config every trial starts from
    metric: str  # the monitored validation metric (trainer.monitor)
    direction: str = "minimize"  # or maximize (full-ranking metrics)


def make_tune_spec(out: str | Path, learners: list[str], trials: int, overrides: Optional[list[str]] = None,
                   config_path: Optional[list[str]] = None) -> TuneSpec:
    """A checked ``TuneSpec`` from command-line values."""
    from metarec.config import group_options, search_path

    known = group_options("learner", search_path(config_path or []))
    chosen: list[str] = []
    for name in learners or []:
        if name not in known:
            raise ConfigError(f"unknown learner {name!r} in --learners (available: {', '.join(known)})")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ConfigError("--learners needs at least one learner")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials must be an integer >= 1, got {trials!r}")
    overrides = list(overrides or [])
    for arg in overrides:
        key = arg.split("=", 1)[0].strip()
        for owned, hint in _FORBIDDEN.items():
            if key == owned or key.startswith(owned + "."):
                raise ConfigError(f"tune sets {owned} itself; drop the override {arg!r} ({hint})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MetarecError(f"--out {out} exists and is not a folder")
    extra = [Path(p).expanduser().resolve() for p in config_path or []]
    return TuneSpec(out.resolve(), chosen, trials, overrides, extra)


# -------------------------------------------------------------------------------------------- configs
def trial_config(spec: TuneSpec, learner: str, values: dict[str, Any]):
    """The validated config of one trial (``values``: searched key -> chosen value)."""
    from metarec.config import compose, search_path

    try:
        cfg = compose([*spec.overrides, f"learner={learner}", *as_overrides(values)], search_path(spec.config_path))
    except ConfigError as e:
        raise ConfigError(f"{e} (in the config of learner {learner!r})") from None
    cfg.run.root = str(spec.out)
    cfg.run.experiment = TRIALS
    cfg.run.name = None
    cfg.data.manifest = str(spec.out / MANIFEST)
    cfg.data.eval_support_sizes = []
    cfg.trainer.enable_progress_bar = False  # one progress bar across trials instead
    return cfg


def plan_study(spec: TuneSpec, learner: str) -> Study:
    """Load and check ``learner``'s search space: every value it allows must give a valid config."""
    from metarec.config import search_path
    from metarec.train import run_monitor

    path, params = load_space(learner, search_path(spec.config_path))
    fixed = {o.split("=", 1)[0].strip() for o in spec.overrides}
    params = [p for p in params if p.key not in fixed]  # an override fixes a searched setting
    base = trial_config(spec, learner, {})
    t = base.trainer
    if "ddp" in str(t.strategy) or str(t.devices) != "1" or t.num_nodes != 1:
        raise ConfigError("tune runs every trial in this one process: use trainer.devices=1 and no DDP strategy "
                          f"(got trainer.strategy={t.strategy}, devices={t.devices}, num_nodes={t.num_nodes})")
    samples = {p.key: p.sample_values() for p in params}
    for i in range(max(map(len, samples.values()), default=0)):  # all settings at once: a few composes
        try:
            trial_config(spec, learner, {k: v[min(i, len(v) - 1)] for k, v in samples.items()})
        except ConfigError as together:
            for key, values in samples.items():  # name the culprit
                for v in values:
                    try:
                        trial_config(spec, learner, {key: v})
                    except ConfigError as e:
                        raise ConfigError(f"{path}: {key}={format_value(v)} gives no valid config: {e}") from None
            raise ConfigError(f"{path}: its settings together give no valid config: {together}") from None
    monitor = run_monitor(base)
    return Study(learner, params, base, monitor.key, monitor.direction)


def check_base(spec: TuneSpec, study: Study) -> None:
    """A study made by an earlier call must have been made with the same settings (and every study in
    DIR with the same data)."""
    from metarec.runs import RESULT_NEUTRAL, config_difference

    root = spec.out / TRIALS
    own = root / study.learner
    others = [p.parent for p in sorted(root.glob("*/config.yaml")) if p.parent != own]
    checks = [(own, RESULT_NEUTRAL)] if (own / "config.yaml").is_file() else []
    checks += [(d, (*RESULT_NEUTRAL, "learner", "model", "trainer", "seed")) for d in others[:1]]
    for folder, ignored in checks:
        diff = config_difference(folder, study.base, ignored)
        if diff:
            key, a, b = diff
            raise ConfigError(f"the studies in {spec.out} were made with {key}={a!r} ({folder.name}), this call asks "
                              f"for {b!r}; use the same overrides or choose another --out")


# ------------------------------------------------------------------------------------------ the studies
@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One ``metarec tune`` per folder at a time (the lock goes with the process, even when killed)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MetarecError(f"another metarec tune is working in {out}; wait for it or choose another --out") from None
        yield


def _prepare_split(spec: TuneSpec, cfg) -> str:
    """Make DIR/split_manifest.json (first call) or load it; returns its content hash."""
    from metarec.config import data_config
    from metarec.data.datamodule import ColdStartDataModule

    dc = data_config(cfg.data)
    path = spec.out / MANIFEST
    if path.exists():
        dm = ColdStartDataModule(dc, seed=int(cfg.seed))
        dm.setup()  # refuses a manifest made on other data or edited
    else:
        dc.manifest = None
        dm = ColdStartDataModule(dc, seed=int(cfg.seed))
        dm.setup()
        dm.save_manifest(path)
    return dm.split.manifest["content_hash"]


def _storage(out: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported by metarec, in one line
    return optuna.storages.RDBStorage(f"sqlite:///{out / STUDY_DB}")


def _open_study(storage, study: Study, pruner):
    """Create or load the learner's study; mark trials left running by a killed process failed and queue
    them again with their settings."""
    import optuna
    from optuna.trial import TrialState

    s = optuna.create_study(study_name=study.learner, storage=storage, direction=study.direction, pruner=pruner,
                            load_if_exists=True)
    space = {p.key: p.describe() for p in study.params}
    saved = s.user_attrs.get("space")
    if saved is None:
        s.set_user_attr("space", space)
        s.set_user_attr("metric", study.metric)
        s.set_user_attr("seed", int(study.base.seed))
    elif saved != space:
        raise ConfigError(f"the search space of learner {study.learner!r} differs from the one its study in {STUDY_DB} "
                          "was made with; restore it or choose another --out")
    study_id = storage.get_study_id_from_name(study.learner)
    for t in s.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(tid, "note", "interrupted (process ended); re-run")
        storage.set_trial_state_values(tid, TrialState.FAIL)
        s.enqueue_trial(t.params, user_attrs={"note": f"re-run of interrupted trial {t.number}"})
    # a seed per call that differs with the history, so a resumed study does not repeat random settings
    s.sampler = optuna.samplers.TPESampler(seed=int(study.base.seed) * 1_000_003 + len(s.trials))
    return s


def _counted(s) -> list:
    from optuna.trial import TrialState

    return s.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def _best_record(spec: TuneSpec, study: Study, s, split_hash: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    complete = s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if s is not None else []
    sign = 1.0 if study.direction == "minimize" else -1.0
    best = min(complete, key=lambda t: (sign * t.value, t.number)) if complete else None
    return {
        "learner": study.learner, "metric": study.metric,
        "value": float(best.value) if best else None, "trial": best.number if best else None,
        "trials": len(_counted(s)) if s is not None else 0, "seed": int(study.base.seed), "split_hash": split_hash,
        "base_overrides": list(spec.overrides), "overrides": as_overrides(best.params) if best else [],
    }


def _progress(total: int, enabled: bool, echo: Callable[[str], None]):
    """A rich progress bar over all trials of the call (with ETA), or ``None``; and the line printer."""
    if not enabled:
        return None, echo
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn())
    return bar, lambda line: bar.console.print(line, markup=False, highlight=False, soft_wrap=True)


def _write_tables(spec: TuneSpec, storage, metrics: dict[str, str]) -> list[Path]:
    """trials.csv / trials.md over every study in DIR/study.db (also those of earlier calls)."""
    import optuna

    studies = []
    for name in optuna.get_all_study_names(storage):
        s = optuna.load_study(study_name=name, storage=storage)
        metrics.setdefault(name, s.user_attrs.get("metric", ""))
        studies.append((name, s.trials))
    return write_tables(spec.out, trial_rows(studies), metrics)


def _trial_line(st: Study, s, t) -> str:
    from optuna.trial import TrialState

    value = f"{st.metric} {t.value:.4f}" if t.value is not None else t.state.name.lower()
    note = t.user_attrs.get("note", "")
    complete = s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = f"best {s.best_value:.4f}" if complete else "no finished trial yet"
    secs = t.duration.total_seconds() if t.duration is not None else 0.0
    return f"{st.learner} trial {t.number}: {value}{' (' + note + ')' if note else ''}; {best}; {secs:.1f} s"


def tune(spec: TuneSpec, echo: Callable[[str], None] = print, show_progress: bool = False,
         pruner=None) -> dict[str, Any]:
    """Run (or continue) every learner's study, then write the tables and the best configs. ``pruner``:
    an Optuna pruner (default: median pruning after 5 trials, from the second epoch on)."""
    import optuna
    from omegaconf import OmegaConf

    from metarec.runs import atomic_write_text

    studies = [plan_study(spec, learner) for learner in spec.learners]  # every check before anything is made
    for st in studies:
        check_base(spec, st)
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    metrics = {st.learner: st.metric for st in studies}
    with _locked(spec.out):
        split_hash = _prepare_split(spec, studies[0].base)
        storage = _storage(spec.out)
        opened = {}
        for st in studies:
            (spec.out / TRIALS / st.learner).mkdir(parents=True, exist_ok=True)
            atomic_write_text(spec.out / TRIALS / st.learner / "config.yaml", OmegaConf.to_yaml(st.base, resolve=True))
            opened[st.learner] = _open_study(storage, st, pruner) if st.params else None
        todo = {l: max(0, spec.trials - len(_counted(s))) if s is not None else 0 for l, s in opened.items()}
        total = sum(todo.values())
        bar, say = _progress(total, show_progress, echo)
        done, best_files = 0, []
        with bar if bar is not None else _nothing():
            task = bar.add_task("tuning", total=total) if bar is not None else None
            for st in studies:
                s = opened[st.learner]
                if s is None:
                    say(f"{st.learner}: empty search space; its defaults are its tuned config")
                elif todo[st.learner] == 0:
                    say(f"{st.learner}: {spec.trials} trials done before")
                else:
                    def objective(trial, st=st):
                        cfg = trial_config(spec, st.learner, {p.key: p.suggest(trial) for p in st.params})
                        folder = spec.out / TRIALS / st.learner / f"trial-{trial.number:03d}"
                        return run_trial(cfg, folder, trial, st.metric)

                    def after(s, t, st=st):
                        nonlocal done
                        done += 1
                        if bar is not None:
                            bar.update(task, advance=1, description=f"tuning {st.learner}")
                        say(f"[{done:>{len(str(total))}}/{total}] {_trial_line(st, s, t)}")
                        _write_tables(spec, storage, metrics)

                    s.optimize(objective, n_trials=todo[st.learner], callbacks=[after], gc_after_trial=True)
                record = _best_record(spec, st, s, split_hash)
                if s is None or record["trials"] >= spec.trials:
                    best_files.append(write_best(spec.out, st.learner, record))
        outputs = [*_write_tables(spec, storage, metrics), *best_files]
    return {"outputs": outputs, "trials": done}


@contextmanager
def _nothing() -> Iterator[None]:
    yield
