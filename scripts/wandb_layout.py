"""Print where the offline W&B runs under a folder will land once synced, and what they hold.

    python scripts/wandb_layout.py DIR      # e.g. the --out folder of `metarec compare ... logger=wandb`

One block per run (found as DIR/**/wandb/offline-run-*/run-*.wandb): its name, group, job_type and tags;
the validation metrics whose summary keeps their best value (``min``/``max``) with that value; its
artifacts; and its W&B line plots. W&B 0.31 writes no config or summary file offline, so the run's
record log is read with ``wandb.proto`` (the same format ``wandb sync`` uploads).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metarec.wandb_records import offline_records as records


def describe(log: Path) -> list[str]:
    run, best, artifacts, plots = None, {}, [], []
    for r in records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "summary":
            for item in r.summary.update:
                value = json.loads(item.value_json)
                if isinstance(value, dict) and set(value) & {"min", "max"}:
                    best["/".join(item.nested_key)] = value
        elif kind == "artifact" and r.artifact.type != "run_table":
            artifacts.append(f"{r.artifact.type} {r.artifact.name}" + (f" ({', '.join(a for a in r.artifact.aliases if a != 'latest')})"
                                                                        if set(r.artifact.aliases) - {"latest"} else ""))
        elif kind == "config":
            plots += ["/".join(i.nested_key[2:]) for i in r.config.update if list(i.nested_key[:2]) == ["_wandb", "visualize"]]
    if run is None:
        return [f"{log}: no run record"]
    lines = [f"{run.display_name}: group {run.run_group!r}, job_type {run.job_type!r}",
             f"  tags: {', '.join(run.tags)}"]
    if best:
        lines.append("  best: " + ", ".join(f"{k} {op} {v:.4f}" for k, d in sorted(best.items()) for op, v in d.items()))
    if artifacts:
        lines.append("  artifacts: " + "; ".join(artifacts))
    if plots:
        lines.append("  line plots: " + ", ".join(sorted(plots)))
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    root = Path(argv[0])
    logs = sorted(root.glob("**/wandb/offline-run-*/run-*.wandb"))
    if not logs:
        print(f"no offline W&B run under {root}", file=sys.stderr)
        return 2
    for log in logs:
        print("\n".join(describe(log)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
