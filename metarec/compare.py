"""``metarec compare``: a grid of learners x seeds on one shared split, summarised in tables and plots.

The grid lives in one output folder ``DIR``:

- ``DIR/split_manifest.json``: the one split every run uses (made by the first call, reused after);
- ``DIR/runs/<learner>-s<seed>/``: one ordinary run folder per learner (or variant, ``maml@inner_steps=5``:
  see ``metarec.compare_variants``) and seed (see ``metarec.runs``);
  a run whose ``metrics.json`` exists is finished and never recomputed, so a call can be repeated or
  resumed after an interruption;
- ``DIR/results.csv``, ``DIR/results.md``, ``DIR/curve_<scenario>.png``, ``DIR/bars_mae.png``: the
  summaries, rewritten (atomically) from the finished runs on every call.

Heavy modules (torch, Lightning, matplotlib, scipy, wandb) are imported where they are needed, so that
``metarec --help`` stays fast.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from metarec.compare_outputs import (  # noqa: F401  (re-exported: the public names of compare)
    ALL, CSV_COLUMNS, CURVE_METRIC, MANIFEST, TABLE_METRICS, Stat, _finish_wandb_run, atomic_write_bytes, csv_text, log_to_wandb,
    parse_metric, render_markdown, result_rows, summarize, users_per_size,
)
from metarec.compare_plots import plot_bars, plot_curves  # noqa: F401  (re-exported)
from metarec.compare_variants import SYNTAX as VARIANT_SYNTAX, is_variant, parse_variant
from metarec.errors import ConfigError, DataError, MetarecError
from metarec.runs import config_difference

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SUPPORT_SIZES = (1, 3, 5, 10, 20)
RUNS = "runs"  # run.experiment: the runs live in DIR/runs/<learner>-s<seed>

HELP = f"""\
Train and test every learner x seed on ONE shared cold-start split, then summarise the grid.

  1. The split: made from the config of the first learner and saved as DIR/{MANIFEST}; when that
     file exists already (a repeated or resumed call) it is reused, and data settings that do not match
     it (data source or options, data.split.*) are an error rather than a mixed grid.
  2. Runs: DIR/{RUNS}/<learner>-s<seed>/, each an ordinary `metarec fit` run folder, tested on the full
     support and again with each test user's support cut to K ratings for every K of --support-sizes
     (metrics test/<scenario>/<metric> and test_k<K>/<scenario>/<metric>). A finished run (metrics.json
     present) is never recomputed, so the command is resumable: repeat it to continue after an
     interruption, or delete one run's metrics.json to recompute only that run. A finished run made
     with other settings than the current call's is an error (logger, progress bar, data folder, workers
     and devices may differ). One progress line per run.
  3. Outputs in DIR, rewritten atomically from the finished runs on every call:
       results.csv         one row per run and test metric: learner, seed, support_size ("all" for
                           the full support, else K), scenario, metric, value, run_dir (relative to DIR)
       results.md          learners x (scenario, metric) at full support as `mean ± h`, h = half-width
                           of the 95% Student-t confidence interval over seeds, best per column in bold;
                           then the MAE by support size K for each scenario (the cold-start curve);
                           the split hash, seeds and number of runs
       curve_<scenario>.png  MAE vs support size K, one line per learner, error bars = 95% CI
       bars_mae.png        full-support MAE per scenario and learner, error bars = 95% CI
     With logger=wandb, the results table and the plots are also logged to one extra W&B run (offline
     unless logger.mode or WANDB_MODE says otherwise; files under DIR/wandb).

Overrides (group=option or dotted.key=value, as for `metarec fit`) apply to every run, e.g.
  metarec compare --out runs/cmp --learners maml melu5 global --seeds 0 1 2 \\
      data=movielens100k trainer.max_epochs=20 logger=wandb
compare sets learner (and learner.*), seed, run.*, data.manifest and data.eval_support_sizes itself;
overriding them is an error (use --learners, --seeds, --out, --support-sizes; for other learner
settings use a variant, below, or add an option file learner/<option>.yaml to a folder given with
--config-path).

Variants: LEARNER@key=value[,key=value] in --learners is that learner with other settings, a row of
its own in every table and plot, run in its own folders DIR/{RUNS}/<variant>-s<seed> (resumable like
the others), e.g.
  metarec compare --out runs/steps --learners maml maml@inner_steps=5 maml@inner_lr=0.1,inner_steps=3
A key without a dot is a learner setting; model.* and trainer.* keys may differ too
(maml@model.embed_dim=16); data settings and seeds are shared by the grid.
"""


@dataclass
class CompareSpec:
    out: Path
    learners: list[str]
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    support_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SUPPORT_SIZES))
    overrides: list[str] = field(default_factory=list)
    config_path: list[Path] = field(default_factory=list)  # searched before METAREC_CONFIG_PATH and the built-ins
    tuned: dict[str, list[str]] = field(default_factory=dict)  # learner -> its best `metarec tune` overrides


# ----------------------------------------------------------------------------------------- arguments
_FORBIDDEN = {
    "learner": "use --learners; for other learner settings add a variant to --learners, e.g. maml@inner_steps=5 "
               "(one row per variant), or an option file learner/<option>.yaml to a folder given with --config-path",
    "seed": "use --seeds",
    "run": "--out DIR places the runs",
    "data.manifest": f"the split is DIR/{MANIFEST}",
    "data.eval_support_sizes": "use --support-sizes",
}


def check_overrides(overrides: Iterable[str]) -> None:
    """Refuse overrides of what compare sets itself (``learner``, ``seed``, ``run.*``, ...)."""
    for arg in overrides:
        key = arg.split("=", 1)[0].strip()
        for owned, hint in _FORBIDDEN.items():
            if key == owned or key.startswith(owned + "."):
                if owned == "learner" and key != owned:  # learner.inner_steps=5 -> --learners maml@inner_steps=5
                    hint = hint.replace("maml@inner_steps=5", f"LEARNER@{arg.strip()[len('learner.'):]}")
                raise ConfigError(f"compare sets {owned} itself; drop the override {arg!r} ({hint})")


def _ints(name: str, values: Iterable[str], minimum: int) -> list[int]:
    out: list[int] = []
    for v in values:
        try:
            i = int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {v!r} is not an integer") from None
        if i < minimum:
            raise ConfigError(f"{name}: {i} is less than {minimum}")
        if i not in out:
            out.append(i)
    return out


def _runs_on_model(option: str, overrides: list[str], config_path: list[Path]) -> bool:
    """Whether learner ``option`` runs on the base model ``overrides`` choose: an option written for one
    model (``needs_model``, e.g. ``fism`` and ``ridge`` for ``twotower``) is left out of the default
    learner list under another model (named in ``--learners`` it still runs, or says why not)."""
    from metarec.config import compose, search_path
    from metarec.learners import LEARNERS

    try:
        cfg = compose([*overrides, f"learner={option}"], search_path(config_path))
        needs = getattr(LEARNERS.get(str(cfg.learner.name)).factory, "needs_model", None)
    except MetarecError:
        return True  # a broken option or override: make_spec and the run report it
    return needs is None or needs == str(cfg.model.name)


def make_spec(
    out: str | Path,
    learners: Optional[list[str]] = None,
    seeds: Optional[list[str]] = None,
    support_sizes: Optional[list[str]] = None,
    overrides: Optional[list[str]] = None,
    config_path: Optional[list[str]] = None,
) -> CompareSpec:
    """A checked ``CompareSpec`` from command-line strings (``None`` for a default)."""
    from metarec.config import group_options, search_path

    known = group_options("learner", search_path(config_path or []))  # also checks that the folders exist
    extra = [Path(p).expanduser().resolve() for p in config_path or []]
    # variants (maml@inner_steps=5) hold '=': taken for overrides when they followed other words
    variants = [o for o in overrides or [] if is_variant(o)]
    overrides = [o for o in overrides or [] if not is_variant(o)]
    if learners is None:  # every option that runs on the chosen base model
        learners = [] if variants else [o for o in known if _runs_on_model(o, overrides, extra)]
    learners = [*learners, *(v for v in variants if v not in learners)]
    if not learners:
        raise ConfigError("--learners needs at least one learner")
    chosen: list[str] = []
    for label in learners:
        name, _ = parse_variant(label)
        if name not in known:
            raise ConfigError(f"unknown learner {name!r} in --learners (available: {', '.join(known)}; "
                              f"a variant is {VARIANT_SYNTAX})")
        if label not in chosen:
            chosen.append(label)
    seed_list = _ints("--seeds", seeds, 0) if seeds is not None else list(DEFAULT_SEEDS)
    if not seed_list:
        raise ConfigError("--seeds needs at least one seed")
    sizes = list(DEFAULT_SUPPORT_SIZES)
    if support_sizes is not None:
        sizes = sorted(_ints("--support-sizes", support_sizes, 1))
    if not sizes:
        raise ConfigError("--support-sizes needs at least one size")
    check_overrides(overrides)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MetarecError(f"--out {out} exists and is not a folder")
    return CompareSpec(out.resolve(), chosen, seed_list, sizes, overrides, extra)


# -------------------------------------------------------------------------------------------- configs
def run_name(learner: str, seed: int) -> str:
    return f"{learner}-s{seed}"


def run_config(spec: CompareSpec, learner: str, seed: int):
    """The validated config of one run of the grid; ``learner`` a learner option or a variant of one
    (``maml@inner_steps=5``: its settings come after the learner option's)."""
    from metarec.config import compose, search_path

    name, variant = parse_variant(learner)
    try:
        tuned = spec.tuned.get(name, [])  # the learner's tuned settings; overrides and variants win over them
        cfg = compose([*tuned, *spec.overrides, f"learner={name}", *variant, f"seed={seed}"],
                      search_path(spec.config_path))
    except ConfigError as e:
        raise ConfigError(f"{e} (in the config of learner {learner!r})") from None
    # Set directly rather than as `key=value` strings: a path is then never parsed as YAML.
    cfg.run.root = str(spec.out)
    cfg.run.experiment = RUNS
    cfg.run.name = run_name(learner, seed)
    cfg.data.manifest = str(spec.out / MANIFEST)
    cfg.data.eval_support_sizes = list(spec.support_sizes)
    return cfg


def check_finished_run(run_dir: Path, cfg) -> None:
    """A finished run must have been made with the settings compare would use now (settings that do
    not change results aside)."""
    try:
        diff = config_difference(run_dir, cfg)
    except MetarecError as e:
        raise DataError(f"finished {e}; delete that run or choose another --out") from None
    if diff:
        key, a, b = diff
        hint = "use the same --support-sizes" if key == "data.eval_support_sizes" else "use the same overrides"
        raise ConfigError(
            f"finished run {run_dir} was made with {key}={a!r}, this call asks for {b!r}; {hint}, "
            f"delete that run, or choose another --out"
        )


def finished_record(run_dir: Path) -> dict:
    """The record of a finished run's ``metrics.json``; one ``DataError`` line if it is not a run record."""
    from metarec.report import read_record

    try:
        return read_record(run_dir / "metrics.json")
    except DataError as e:
        raise DataError(f"finished run {run_dir}: its metrics.json {e}; delete that file to recompute the run, "
                        "or choose another --out") from None


# -------------------------------------------------------------------------------------------- the split
def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
        manifest["config"].keys()
        manifest["dataset"], manifest["content_hash"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is not a readable split manifest ({e}); delete it or choose another --out") from None
    return manifest


def check_split_config(spec: CompareSpec, cfg) -> None:
    """An existing DIR/split_manifest.json must have been made with ``cfg``'s ``data.split`` settings."""
    from dataclasses import asdict

    from metarec.config import split_config

    path = spec.out / MANIFEST
    if not path.exists():
        return
    saved = _read_manifest(path)["config"]
    wanted = asdict(split_config(cfg.data))
    for key in sorted(set(saved) | set(wanted)):
        if saved.get(key) != wanted.get(key):
            raise ConfigError(
                f"{path} was made with data.split.{key}={saved.get(key)!r}, this call asks for "
                f"{wanted.get(key)!r}; use the data settings of the first call or choose another --out"
            )


def prepare_split(spec: CompareSpec, cfg) -> dict:
    """Make DIR/split_manifest.json from ``cfg``'s data settings, or check that the existing one fits them
    (split settings, data source, its options and files). Returns the manifest."""
    from metarec.config import data_config
    from metarec.data.datamodule import ColdStartDataModule

    path = spec.out / MANIFEST
    dc = data_config(cfg.data)
    if not path.exists():
        dc.manifest = None
        dm = ColdStartDataModule(dc, seed=int(cfg.seed))
        dm.setup()
        spec.out.mkdir(parents=True, exist_ok=True)
        dm.save_manifest(path)
        return dm.split.manifest
    check_split_config(spec, cfg)
    dataset = _read_manifest(path)["dataset"]
    dc.manifest = str(path)
    dm = ColdStartDataModule(dc, seed=int(cfg.seed))
    try:
        dm.setup()  # load_split refuses a manifest made on other data (source, options, files) or edited
    except DataError as e:
        raise DataError(
            f"{e} (it was made on {dataset!r}); use the data settings of the first call or choose another --out"
        ) from None
    return dm.split.manifest


# ------------------------------------------------------------------------------------------- the runs
def run_grid(spec: CompareSpec, echo: Callable[[str], None] = print) -> list[dict]:
    """Run (or reuse) every learner x seed; returns their metrics records, in grid order."""
    from metarec.runs import is_finished

    configs = {(l, s): run_config(spec, l, s) for l in spec.learners for s in spec.seeds}  # validates all first
    first = configs[(spec.learners[0], spec.seeds[0])]
    check_split_config(spec, first)  # cheap checks first: no data is loaded for them
    for (learner, seed), cfg in configs.items():
        d = spec.out / RUNS / run_name(learner, seed)
        if is_finished(d):
            finished_record(d)  # an unreadable metrics.json stops the call before anything runs
            check_finished_run(d, cfg)
    manifest = prepare_split(spec, first)
    total = len(configs)
    width = max(len(l) for l in spec.learners)
    records = []
    for i, ((learner, seed), cfg) in enumerate(configs.items(), 1):
        d = spec.out / RUNS / run_name(learner, seed)
        head = f"[{i:>{len(str(total))}}/{total}] {learner:<{width}} seed {seed}:"
        if is_finished(d):
            echo(f"{head} done before")
        else:
            from metarec.train import fit

            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    # a support-size pass where no test user of a scenario has K ratings is empty (NaN metrics,
                    # shown as – in results.md); Lightning and torchmetrics warn about it
                    warnings.filterwarnings("ignore", message=".*Total length of `DataLoader` across ranks is zero.*")
                    warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                    d = fit(cfg)
            finally:
                if cfg.logger.name == "wandb":
                    _finish_wandb_run()
            echo(f"{head} {time.perf_counter() - t0:.1f} s")
        record = finished_record(d)
        record["learner"] = learner  # a variant's label (maml@inner_steps=5), not its learner option
        if record.get("split_hash") != manifest["content_hash"]:
            raise DataError(
                f"run {d} used split {record.get('split_hash')!r}, not {MANIFEST}'s {manifest['content_hash']!r}; "
                "delete that run"
            )
        record["run_dir"] = str(d)
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------ together
def compare(spec: CompareSpec, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid, then write the summaries; returns ``{"records", "outputs", "wandb"}``."""
    records = run_grid(spec, echo)
    out = spec.out
    rows = result_rows(records, out)
    stats = summarize(rows)
    split_hashes = {r["split_hash"] for r in records}
    (split_hash,) = split_hashes
    outputs = [out / "results.csv", out / "results.md"]
    from metarec.runs import atomic_write_text

    atomic_write_text(outputs[0], csv_text(rows))
    users = users_per_size(_read_manifest(out / MANIFEST), spec.support_sizes)  # test users per scenario and K
    md = render_markdown(stats, spec.learners, spec.seeds, spec.support_sizes, split_hash, len(records),
                         title=f"metarec compare: {out.name}", overrides=spec.overrides, users=users)
    atomic_write_text(outputs[1], md)
    images = plot_curves(stats, spec.learners, spec.support_sizes, len(spec.seeds), out, users)
    images.append(plot_bars(stats, spec.learners, len(spec.seeds), out))
    outputs += images
    config = {
        "learners": spec.learners, "seeds": spec.seeds, "support_sizes": spec.support_sizes,
        "overrides": spec.overrides, "split_hash": split_hash, "runs": len(records),
    }
    first = run_config(spec, spec.learners[0], spec.seeds[0])
    wandb_dir = log_to_wandb(first.logger, out, rows, stats, images, config)
    return {"records": records, "outputs": outputs, "wandb": wandb_dir, "markdown": md}
