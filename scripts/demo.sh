#!/usr/bin/env bash
# The quick start: meta-train MAML and run the two baselines on the synthetic data set (same split),
# then print the per-scenario table computed from the three run folders.
set -euo pipefail
VENV="${1:-.venv}"
ROOT="runs/demo/$(date +%Y%m%d-%H%M%S)"
for learner in maml global item_mean; do
  echo "== metarec fit experiment=quickstart learner=$learner"
  "$VENV/bin/metarec" fit experiment=quickstart learner="$learner" run.root="$ROOT" > /dev/null
done
echo
echo "Quick start on synthetic data (query MAE / RMSE / nDCG@3 per cold-start scenario; runs in $ROOT):"
"$VENV/bin/metarec" report "$ROOT"
