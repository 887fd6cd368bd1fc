#!/bin/bash
# Submit a comparison grid as a job array (scripts/slurm/compare_array.sbatch) plus a CPU job that
# writes the whole table and plots once every array task has succeeded. Overrides go to every task.
#
#   OUT=runs/cmp LEARNERS="maml fomaml global finetune" SEEDS="0 1 2" scripts/slurm/submit_compare.sh data=movielens1m
set -euo pipefail
: "${OUT:?set OUT, the compare output folder}" "${LEARNERS:?set LEARNERS}" "${SEEDS:=0 1 2}"
read -r -a learners <<< "$LEARNERS"
read -r -a seeds <<< "$SEEDS"
n=$(( ${#learners[@]} * ${#seeds[@]} ))
here=$(dirname "$0")
array=$(OUT="$OUT" LEARNERS="$LEARNERS" SEEDS="$SEEDS" sbatch --parsable --export=ALL --array=0-$((n - 1)) \
  "$here/compare_array.sbatch" "$@")
# the summary: every run is finished by then, so this only reads them and writes results.csv/.md and plots
sbatch --dependency=afterok:"$array" --job-name=metarec-cmp-summary --ntasks=1 --time=00:30:00 \
  --wrap="${METAREC:-.venv/bin/metarec} compare --out $OUT --learners $LEARNERS --seeds $SEEDS trainer.accelerator=gpu trainer.enable_progress_bar=false $*"
echo "array job $array ($n tasks) and its summary job submitted"
