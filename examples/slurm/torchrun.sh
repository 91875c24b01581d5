#!/bin/bash
# The same without SLURM: torchrun starts one process per GPU on this machine. A SIGTERM (what most
# schedulers send before they kill a job; torchrun passes it on to every process) or Ctrl-C stops all
# ranks at the same step with last.ckpt, exit status 128 + the signal; running this script again
# with the same NAME goes on from there.
#   bash examples/slurm/torchrun.sh NAME [GPUS] [MORE twinloop OPTIONS]
set -uo pipefail
NAME=${1:?a run name: the run goes to lightning_logs/NAME}
GPUS=${2:-4}
shift $(( $# < 2 ? $# : 2 ))

RESUME=()
if [ -f "lightning_logs/${NAME}/checkpoints/last.ckpt" ]; then
    RESUME=(--ckpt_path last)
fi
exec .venv/bin/torchrun --standalone --nproc_per_node "${GPUS}" -m project fit -c configs/cifar10_resnet18.yaml \
    --trainer.devices "${GPUS}" --trainer.strategy ddp --run_name "${NAME}" "${RESUME[@]}" "$@"
