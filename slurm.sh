#!/usr/bin/env bash
# A SLURM job for bridge.py that survives preemption and time limits: the scheduler sends SIGTERM,
# every rank stops after its current step with a checkpoint, this script requeues the job, and the
# requeued job runs the very same command, which continues the run (--auto_resume True).
#
#   sbatch slurm.sh --stage bridge --freeze 0-5                 # one node, its GPUs
#   sbatch --nodes 4 slurm.sh --stage bridge --freeze 0-5       # four nodes: one torchrun each
#   OUT=/shared/runs/b0 sbatch slurm.sh ...                     # the run's folder (default below)
#
# OUT must be on storage that every node sees (the run's folder: only rank 0 writes it, and a
# resume reads it on every node); every node must see the same data (--data_dir), or the job stops
# with one line naming the rank whose data differs.
#SBATCH --job-name=bridge
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# --signal=B:TERM@300: SIGTERM to this script 300 s before the time limit; one step and one
# checkpoint must fit in it (a gpt2-medium checkpoint is about 4 GB).
set -u
OUT=${OUT:-$HOME/runs/bridge-$SLURM_JOB_NAME}
GPUS=${SLURM_GPUS_ON_NODE:-1}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_JOB_NUM_NODES node(s) x $GPUS GPU(s), run folder $OUT"

srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$HEAD:29500" --rdzv_id "$SLURM_JOB_ID" \
    bridge.py --auto_resume True --out_dir "$OUT" "$@" &
PID=$!
stopped=0
trap 'stopped=1; kill -TERM "$PID" 2>/dev/null' TERM   # srun hands SIGTERM to every rank
wait "$PID"
rc=$?
while kill -0 "$PID" 2>/dev/null; do   # the trap ended the first wait: wait for the checkpoint
    wait "$PID"
    rc=$?
done
if [ "$stopped" = 1 ]; then   # torchrun exits 1 on a signal, whatever its ranks did: requeue
    echo "stopped by SIGTERM (exit $rc): requeueing job $SLURM_JOB_ID; it continues from $OUT/ckpt.pt"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
