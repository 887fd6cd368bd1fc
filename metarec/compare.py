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
    ALL, CSV_COLUMNS, CURVE_METRIC, MANIFEST, TABLE_METRICS, Stat, atomic_write_bytes, csv_text, log_to_wandb,
    parse_metric, render_markdown, result_rows, summarize, users_per_size,
)
from metarec.compare_help import HELP, RUNS  # noqa: F401  (HELP: the command's help text, re-exported)
from metarec.compare_plots import plot_bars, plot_curves  # noqa: F401  (re-exported)
from metarec.compare_variants import SYNTAX as VARIANT_SYNTAX, is_variant, parse_variant
from metarec.errors import ConfigError, DataError, MetarecError
from metarec.runs import config_difference

DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_SUPPORT_SIZES = (1, 3, 5, 10, 20)


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
    model (``needs_model``, e.g. ``fism`` and ``ridge`` for ``twotower``) or adapting a scope the model
    lacks (``has_scope``: ``maml_lora``'s ``lora`` needs a Transformer with adapters) is left out of the
    default learner list under another model (named in ``--learners`` it still runs, or says why not)."""
    from metarec.config import compose, search_path, to_object
    from metarec.learners import LEARNERS
    from metarec.models import MODELS

    try:
        cfg = compose([*overrides, f"learner={option}"], search_path(config_path))
        needs = getattr(LEARNERS.get(str(cfg.learner.name)).factory, "needs_model", None)
        if needs is not None and needs != str(cfg.model.name):
            return False
        model = MODELS.get(str(cfg.model.name))
        has_scope = getattr(model.factory, "has_scope", None)
        scope = cfg.learner.get("scope")
        return scope is None or has_scope is None or has_scope(str(scope), to_object(cfg.model, model.config_cls))
    except MetarecError:
        return True  # a broken option or override: make_spec and the run report it


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
    if cfg.logger.name == "wandb":  # one W&B group per grid (--out, unless logger.group), a job_type per learner
        cfg.logger.group = cfg.logger.group or spec.out.name
        cfg.logger.job_type = learner
        if variant:
            cfg.logger.tags = [*cfg.logger.tags, f"variant:{learner}"[:64]]
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
def run_grid(spec: CompareSpec, echo: Callable[[str], None] = print, progress: Optional[bool] = None) -> list[dict]:
    """Run (or reuse) every learner x seed; returns their metrics records, in grid order. ``progress``: a
    rich progress bar over the grid (``None``: on an interactive terminal), else plain lines with an ETA
    (see ``metarec.compare_progress``)."""
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
    from metarec.compare_progress import GridProgress

    total = len(configs)
    width = max(len(l) for l in spec.learners)
    done = sum(is_finished(spec.out / RUNS / run_name(l, s)) for l, s in configs)
    records = []
    with GridProgress(total, done, echo, bar=progress) as grid:
        for i, ((learner, seed), cfg) in enumerate(configs.items(), 1):
            d = spec.out / RUNS / run_name(learner, seed)
            head = f"[{i:>{len(str(total))}}/{total}] {learner:<{width}} seed {seed}:"
            if is_finished(d):
                grid.reused(f"{head} done before")
            else:
                grid.starting(f"{learner} seed {seed}")
                if grid.shows_bar:  # the grid's bar instead of one bar per run
                    cfg.trainer.enable_progress_bar = False
                t0 = time.perf_counter()
                d = _fit_quietly(cfg)
                seconds = time.perf_counter() - t0
                grid.finished(f"{head} {seconds:.1f} s", seconds)
            records.append(_grid_record(d, learner, manifest))
    return records


def _fit_quietly(cfg) -> Path:
    """``fit`` one run of the grid; its W&B run (if any) is ended whatever happens."""
    from metarec.train import fit

    try:
        with warnings.catch_warnings():
            # a support-size pass where no test user of a scenario has K ratings is empty (NaN metrics,
            # shown as – in results.md); Lightning and torchmetrics warn about it
            warnings.filterwarnings("ignore", message=".*Total length of `DataLoader` across ranks is zero.*")
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            return fit(cfg)
    finally:
        if cfg.logger.name == "wandb":
            from metarec.wandb_logging import finish_run

            finish_run()


def _grid_record(d: Path, learner: str, manifest: dict) -> dict:
    """The record of the finished run ``d`` of ``learner``, checked to be on the grid's split."""
    record = finished_record(d)
    record["learner"] = learner  # a variant's label (maml@inner_steps=5), not its learner option
    if record.get("split_hash") != manifest["content_hash"]:
        raise DataError(
            f"run {d} used split {record.get('split_hash')!r}, not {MANIFEST}'s {manifest['content_hash']!r}; "
            "delete that run"
        )
    record["run_dir"] = str(d)
    return record


# ------------------------------------------------------------------------------------------ together
def compare(spec: CompareSpec, echo: Callable[[str], None] = print, progress: Optional[bool] = None) -> dict[str, Any]:
    """Run the grid, then write the summaries; returns ``{"records", "outputs", "wandb"}``. ``progress``:
    see ``run_grid``."""
    records = run_grid(spec, echo, progress)
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
    wandb_dir = log_to_wandb(first, out, rows, stats, images, config, spec.learners, spec.support_sizes, users,
                             files=outputs[:2])
    return {"records": records, "outputs": outputs, "wandb": wandb_dir, "markdown": md}
