#!/bin/bash
# One metarec run with torchrun: NPROC processes (one per GPU) on each of NNODES nodes. Run the same
# command on every node (NODE_RANK 0..NNODES-1, MASTER_ADDR = node 0's address):
#
#   NPROC=4 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/torchrun.sh data=movielens1m learner=maml run.name=ml1m-maml
#
# Lightning detects torchrun's environment. Give run.name (every process must agree on the run folder;
# without it the name derives from torchrun's run id). data.meta_batch_size is the global meta-batch.
# For a quick check on one machine without GPUs: ACCELERATOR=cpu NPROC=2 scripts/torchrun.sh data.params.n_users=300
set -euo pipefail
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ACCELERATOR=${ACCELERATOR:-gpu}
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC" --nnodes="$NNODES" --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m metarec.cli fit \
  trainer.accelerator="$ACCELERATOR" trainer.devices="$NPROC" trainer.num_nodes="$NNODES" trainer.strategy=ddp \
  trainer.enable_progress_bar=false "$@"
