"""``metarec`` command line: ``fit`` (train + test one run), ``report`` (table of finished runs) and
``compare`` (a grid of learners x seeds on one split, with tables and plots), ``tune`` (an Optuna study
per learner on the validation users; ``compare --tuned`` uses its best settings).

User errors print one line ``metarec: error: ...`` and exit with code 2, without a traceback; SIGTERM and
SIGINT print one line saying how to continue and exit with 143 / 130 (``metarec.exits``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metarec.errors import MetarecError
from metarec.exits import Interrupted, fit_resume_hint, rerun_hint, signals_raise, warnings_at_end

CONFIG_PATH_ENV = "METAREC_CONFIG_PATH"  # = metarec.config.CONFIG_PATH_ENV (not imported: --help stays light)

PRINT_CONFIG_NOTE = ("# metarec fit --print-config: model and learner as composed; `metarec fit` also checks their\n"
                     "# keys and types, fills in their defaults and checks trainer.precision")
FIT_EPILOG_HEAD = """arguments are group=option or dotted.key=value (YAML values; nothing is evaluated), e.g.
  metarec fit data=movielens100k learner=maml learner.inner_steps=5 seed=1
"""


def _fit_epilog() -> str:
    from metarec.config import GROUPS, group_options

    try:
        options = {g: group_options(g) for g in (*GROUPS, "experiment")}
    except MetarecError as e:
        return FIT_EPILOG_HEAD + f"\n(cannot list the options: {e})"
    lines = [FIT_EPILOG_HEAD, "groups and their options (<group>/<option>.yaml in the built-in configs and the folders of",
             f"{CONFIG_PATH_ENV}; options in --config-path folders come on top):"]
    for g, names in options.items():
        lines.append(f"  {g:<11} {', '.join(names)}")
    lines.append("\nsee metarec/configs/defaults.yaml for the default option of each group.")
    return "\n".join(lines)


def _add_config_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-path", action="append", default=[], metavar="DIR",
        help=f"a folder of extra configs (<group>/<option>.yaml, e.g. learner/mine.yaml), searched before those "
             f"of {CONFIG_PATH_ENV} and the built-in ones (the first folder holding a file wins); repeatable",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors are user errors too: one line on stderr, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        print(f"metarec: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metarec", description="Meta-learned cold-start recommendation.")
    sub = p.add_subparsers(dest="command", required=True)
    fit = sub.add_parser(
        "fit",
        help="meta-train and test one run",
        epilog=_fit_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("overrides", nargs="*", metavar="group=option|key=value")
    fit.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    _add_config_path(fit)
    rep = sub.add_parser(
        "report", help="print tables of the finished runs under folders",
        description="Tables of finished runs: one table per data set and loss, one row per configuration "
                    "(runs whose settings differ in the seed only), cells mean ± h, h = half-width of the 95% "
                    "Student-t confidence interval over the row's runs; rating and ranking metrics per scenario. "
                    "A metrics.json that is not a run record is skipped with a warning naming it.",
    )
    rep.add_argument("root", nargs="+", help="run folders or folders holding runs")
    rep.add_argument("--stage", default="test",
                     help="metrics of which pass: test (default: full support), test_k<K> (support cut to K, "
                          "runs of data.eval_support_sizes or compare), val, val_k<K> (validation users' supports cut "
                          "to K, runs of data.val_support_sizes)")
    rep.add_argument("--data", nargs="+", action="extend", metavar="DATA",
                     help="only runs on these data sources (data.source, e.g. synthetic movielens100k)")
    rep.add_argument("--learner", nargs="+", action="extend", metavar="LEARNER",
                     help="only runs of these learners (option or algorithm name, e.g. maml melu5)")
    _add_compare(sub)
    _add_tune(sub)
    _add_recommend(sub)
    return p


def _compare_epilog() -> str:
    from metarec.compare import HELP
    from metarec.config import group_options

    try:
        learners = ", ".join(group_options("learner"))
    except MetarecError as e:
        learners = f"(cannot list them: {e})"
    return f"{HELP}\nlearner options (learner/ of the config search path): {learners}"


def _add_compare(sub) -> None:
    from metarec.compare import DEFAULT_SEEDS, DEFAULT_SUPPORT_SIZES

    cmp = sub.add_parser(
        "compare",
        help="train and test learners x seeds on one split; results table, CSV and plots",
        description="Compare learners over seeds on one shared cold-start split (resumable).",
        epilog=_compare_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reused to resume)")
    cmp.add_argument("--learners", nargs="+", metavar="LEARNER",
                     help="learner options (default: every option of the learner group), or variants "
                          "LEARNER@key=value[,key=value] of them, e.g. maml@inner_steps=5 (a row of its own)")
    cmp.add_argument("--seeds", nargs="+", metavar="SEED",
                     help="seeds of model initialisation and training order (default: "
                          f"{' '.join(map(str, DEFAULT_SEEDS))})")
    cmp.add_argument("--support-sizes", nargs="+", metavar="K",
                     help="support sizes K of the extra test passes (default: "
                          f"{' '.join(map(str, DEFAULT_SUPPORT_SIZES))})")
    _add_config_path(cmp)
    cmp.add_argument("--tuned", metavar="DIR",
                     help="a `metarec tune --out DIR` folder: each learner's runs add its best settings "
                          "(DIR/best/<learner>.yaml); default learners: the tuned ones")
    cmp.add_argument("overrides", nargs="*", metavar="group=option|key=value", help="applied to every run")


def _add_tune(sub) -> None:
    from metarec.tune import DEFAULT_TRIALS, HELP

    tune = sub.add_parser(
        "tune",
        help="tune each learner's settings on the validation users (Optuna, resumable)",
        description="Per learner, an Optuna study (TPE, median pruning) over its search space "
                    "(search/<learner>.yaml), scored on the validation users only; resumable.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tune.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reused to resume)")
    tune.add_argument("--learners", nargs="+", required=True, metavar="LEARNER", help="learner options to tune")
    tune.add_argument("--trials", type=int, default=DEFAULT_TRIALS, metavar="N",
                      help=f"trials per learner, the same budget for every learner (default: {DEFAULT_TRIALS}); "
                           "trials of earlier calls count")
    _add_config_path(tune)
    tune.add_argument("overrides", nargs="*", metavar="group=option|key=value", help="applied to every trial")


def _add_recommend(sub) -> None:
    rec = sub.add_parser(
        "recommend",
        help="adapt a finished run to a new user's ratings and print the top-k items",
        description="Adapt a finished run's learner to a new user's ratings (as at test time) and rank "
                    "every item.",
        epilog="The ratings file is CSV with the header `item,rating` (original item ids); for a run trained "
               "on implicit feedback (data.negatives) the rating column may be left out (every item is an "
               "interaction). Rows are numbered as in a spreadsheet: the header is row 1.",
    )
    rec.add_argument("--run", required=True, metavar="RUN", help="a finished run folder (holding metrics.json)")
    rec.add_argument("--ratings", required=True, metavar="CSV", help="the new user's ratings: columns item,rating")
    rec.add_argument("-k", type=int, default=10, help="number of items to list (default: 10)")
    rec.add_argument("--include-seen", action="store_true", help="also list the items the user rated")
    rec.add_argument("--user-feature", action="append", default=[], metavar="FIELD=VALUE",
                     help="a user feature: a raw value (e.g. gender=F, age=37, occupation=writer; looked up in "
                          "the run's codebook.json) or an integer code (repeatable; unknown when not given)")


def _cmd_recommend(args: argparse.Namespace) -> int:
    features: dict[str, str] = {}  # raw values as given; Recommender reads a run's codebook, else integer codes
    for arg in args.user_feature:
        name, sep, value = arg.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise MetarecError(f"--user-feature {arg!r} is not of the form FIELD=CODE or FIELD=VALUE (e.g. gender=F)")
        if name.strip() in features:
            raise MetarecError(f"--user-feature {name.strip()} is given twice")
        features[name.strip()] = value.strip()
    if args.k < 1:
        raise MetarecError(f"-k must be at least 1, got {args.k}")
    if Path(args.run).is_file():
        folder = Path(args.run).parent
        raise MetarecError(f"--run {args.run} is a file, not a run folder; give the folder holding metrics.json"
                           + (f" ({folder})" if (folder / "config.yaml").is_file() else ""))
    from metarec.ratings_file import read_ratings_csv

    pairs, names = read_ratings_csv(Path(args.ratings))  # before torch is imported: bad rows fail fast
    from metarec.recommend import Recommender

    rec = Recommender.load(args.run)
    user = rec.adapt(pairs, features or None, entry_names=names)
    top = user.recommend(args.k, exclude_seen=not args.include_seen)
    rows = [(str(r), str(item), title, f"{score:.2f}") for r, (item, title, score) in enumerate(top, start=1)]
    value = "probability" if rec.implicit else "predicted rating"
    if not rec.learner.predicts_ratings:  # rankers (itemknn, ease) show their ranking score
        value = "score"
    head = ("rank", "item", "title", value)
    widths = [max(len(h), *(len(row[j]) for row in rows)) if rows else len(h) for j, h in enumerate(head)]

    def line(cells) -> str:
        return "  ".join([cells[0].rjust(widths[0]), cells[1].rjust(widths[1]), cells[2].ljust(widths[2]),
                          cells[3].rjust(widths[3])]).rstrip()

    print(line(head))
    for row in rows:
        print(line(row))
    return 0


def _split_off_overrides(values: list[str] | None, overrides: list[str]) -> list[str] | None:
    """``--learners a b data=x``: argparse gives ``data=x`` to ``--learners``; move it to the overrides
    (a variant ``maml@inner_steps=5`` stays a learner, in its place)."""
    if values is None:
        return None
    from metarec.compare_variants import is_variant

    overrides.extend(v for v in values if "=" in v and not is_variant(v))
    return [v for v in values if "=" not in v or is_variant(v)]


def _cmd_fit(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from metarec.config import compose, search_path

    # --print-config: no torch / Lightning import (config.validate's light mode); fit runs every check
    cfg = compose(args.overrides, search_path(args.config_path), light=args.print_config)
    if args.print_config:
        print(PRINT_CONFIG_NOTE)
        print(OmegaConf.to_yaml(cfg))
        return 0
    from metarec.train import fit

    run_dir = None
    try:
        run_dir = fit(cfg)
        from metarec.runs import is_rank_zero

        if not is_rank_zero():  # DDP: the other processes of the run stay quiet
            return 0
        print(f"run finished: {run_dir}")
        from metarec.report import markdown_table
        from metarec.runs import finished_runs

        print(markdown_table(finished_runs(run_dir)))
    except Interrupted as e:
        fit_args = [*(a for d in args.config_path for a in ("--config-path", d)), *args.overrides]
        e.hint = fit_resume_hint(fit_args, bool(cfg.run.name), e.run_dir or run_dir, e.resumable)
        raise
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from metarec.report import load_runs, render_report

    runs, warnings = load_runs(args.root)
    for line in warnings:
        print(f"metarec: warning: {line}", file=sys.stderr)
    if not runs:
        raise MetarecError(f"no finished run (no metrics.json) under {', '.join(args.root)}")
    print(render_report(runs, stage=args.stage, data=args.data, learners=args.learner))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from metarec.compare import compare, make_spec

    overrides = list(args.overrides)
    learners = _split_off_overrides(args.learners, overrides)
    seeds = _split_off_overrides(args.seeds, overrides)
    sizes = _split_off_overrides(args.support_sizes, overrides)
    if args.tuned and learners is None:
        from metarec.tune_outputs import tuned_learners

        learners = tuned_learners(args.tuned)
    spec = make_spec(args.out, learners, seeds, sizes, overrides, config_path=args.config_path)
    if args.tuned:  # a variant (maml@inner_steps=5) starts from its learner's tuned settings
        from metarec.compare_variants import parse_variant
        from metarec.tune_outputs import load_tuned

        spec.tuned = load_tuned(args.tuned, list(dict.fromkeys(parse_variant(l)[0] for l in spec.learners)))
    result = compare(spec, echo=lambda line: print(line, flush=True))
    print()
    print(result["markdown"])
    print("wrote " + ", ".join(str(p) for p in result["outputs"]))
    if result["wandb"] is not None:
        print(f"W&B run: {result['wandb']}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from metarec.tune import make_tune_spec, tune

    overrides = list(args.overrides)
    learners = _split_off_overrides(args.learners, overrides)
    spec = make_tune_spec(args.out, learners, args.trials, overrides, config_path=args.config_path)
    result = tune(spec, echo=lambda line: print(line, flush=True), show_progress=True)
    print("wrote " + ", ".join(str(p) for p in result["outputs"]))
    return 0


def _run(argv: list[str]) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `fit a=1 --config-path DIR b=2`: argparse leaves b=2 over; it is an override like a=1
        if args.command not in ("fit", "compare", "tune") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command == "fit":
        return _cmd_fit(args)
    if args.command == "compare":
        return _cmd_compare(args)
    if args.command == "tune":
        return _cmd_tune(args)
    if args.command == "recommend":
        return _cmd_recommend(args)
    return _cmd_report(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # SIGTERM / SIGINT: one line saying how to continue, exit 143 / 130; warnings wait for the end and
    # are dropped when the one line of a user error or an interrupt ends the command (metarec.exits)
    command = next((a for a in argv if not a.startswith("-")), "")

    def interrupted(e: Interrupted) -> str:
        return f"metarec: interrupted by {e.signal_name}; {e.hint or rerun_hint(command, argv)}"

    with signals_raise(lambda signum: interrupted(Interrupted(signum))), warnings_at_end() as caught:
        try:
            return _run(argv)
        except MetarecError as e:
            caught.clear()
            print(f"metarec: error: {e}", file=sys.stderr)
            return 2
        except Interrupted as e:
            caught.clear()
            print(interrupted(e), file=sys.stderr, flush=True)
            return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
