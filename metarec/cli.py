"""``metarec`` command line: ``fit`` (train + test one run), ``report`` (table of finished runs) and
``compare`` (a grid of learners x seeds on one split, with tables and plots).

User errors print one line ``metarec: error: ...`` and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metarec.errors import MetarecError

FIT_EPILOG_HEAD = """arguments are group=option or dotted.key=value (YAML values; nothing is evaluated), e.g.
  metarec fit data=movielens100k learner=maml learner.inner_steps=5 seed=1
"""


def _fit_epilog() -> str:
    from metarec.config import GROUPS, config_dir, group_options

    try:
        root = config_dir()
    except MetarecError as e:
        return FIT_EPILOG_HEAD + f"\n(config folder not found: {e})"
    lines = [FIT_EPILOG_HEAD, "groups and their options (configs/<group>/<option>.yaml):"]
    for g in (*GROUPS, "experiment"):
        lines.append(f"  {g:<11} {', '.join(group_options(g, root))}")
    lines.append("\nsee configs/defaults.yaml for the default option of each group.")
    return "\n".join(lines)


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
    rep = sub.add_parser("report", help="print a table of the finished runs under a folder")
    rep.add_argument("root", nargs="+", help="run folders or folders holding runs")
    rep.add_argument("--stage", default="test")
    _add_compare(sub)
    return p


def _compare_epilog() -> str:
    from metarec.compare import HELP
    from metarec.config import config_dir, group_options

    try:
        learners = ", ".join(group_options("learner", config_dir()))
    except MetarecError as e:
        learners = f"(config folder not found: {e})"
    return f"{HELP}\nlearner options (configs/learner/): {learners}"


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
                     help="learner options (default: all of configs/learner)")
    cmp.add_argument("--seeds", nargs="+", metavar="SEED",
                     help="seeds of model initialisation and training order (default: "
                          f"{' '.join(map(str, DEFAULT_SEEDS))})")
    cmp.add_argument("--support-sizes", nargs="+", metavar="K",
                     help="support sizes K of the extra test passes (default: "
                          f"{' '.join(map(str, DEFAULT_SUPPORT_SIZES))})")
    cmp.add_argument("overrides", nargs="*", metavar="group=option|key=value", help="applied to every run")


def _split_off_overrides(values: list[str] | None, overrides: list[str]) -> list[str] | None:
    """``--learners a b data=x``: argparse gives ``data=x`` to ``--learners``; move it to the overrides."""
    if values is None:
        return None
    overrides.extend(v for v in values if "=" in v)
    return [v for v in values if "=" not in v]


def _cmd_fit(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from metarec.config import compose

    cfg = compose(args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from metarec.train import fit

    run_dir = fit(cfg)
    print(f"run finished: {run_dir}")
    from metarec.report import markdown_table
    from metarec.runs import finished_runs

    print(markdown_table(finished_runs(run_dir)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from metarec.report import markdown_table
    from metarec.runs import finished_runs

    records = []
    for root in args.root:
        if not Path(root).exists():
            raise MetarecError(f"{root} does not exist")
        records += finished_runs(root)
    if not records:
        raise MetarecError(f"no finished run (no metrics.json) under {', '.join(args.root)}")
    print(markdown_table(records, stage=args.stage))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from metarec.compare import compare, make_spec

    overrides = list(args.overrides)
    learners = _split_off_overrides(args.learners, overrides)
    seeds = _split_off_overrides(args.seeds, overrides)
    sizes = _split_off_overrides(args.support_sizes, overrides)
    spec = make_spec(args.out, learners, seeds, sizes, overrides)
    result = compare(spec, echo=lambda line: print(line, flush=True))
    print()
    print(result["markdown"])
    print("wrote " + ", ".join(str(p) for p in result["outputs"]))
    if result["wandb"] is not None:
        print(f"W&B run: {result['wandb']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fit":
            return _cmd_fit(args)
        if args.command == "compare":
            return _cmd_compare(args)
        return _cmd_report(args)
    except MetarecError as e:
        print(f"metarec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
