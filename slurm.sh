#!/usr/bin/env bash
# A Slurm job for bridge.py that loses nothing to a time limit or a preemption: warned 300 s ahead,
# every rank stops after its current step, rank 0 writes a checkpoint, this script requeues the job,
# and the requeued job runs the very same command, which continues the run (--auto_resume True).
#
#   sbatch slurm.sh --stage bridge --freeze 0-5             # one node, its GPUs: the paper's partial
#   sbatch --nodes 4 slurm.sh --stage bridge --freeze 0-5   # four nodes: one torchrun each
#   OUT=/shared/runs/b0 sbatch slurm.sh ...                 # the run's folder (default below)
#
# OUT must be on storage that every node sees, with room for two checkpoints (the last one and
# the one being written; gpt2-medium's is about 4 GB), and every node must see the same data.
#SBATCH --job-name=bridge
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# The signal's route, and why this one. Slurm warns this script alone (B:) with SIGUSR1 300 s
# before the time limit (and at a preemption where the cluster sets PreemptParameters=
# send_user_signal; otherwise a preemption sends SIGTERM, and the run keeps its last timed
# checkpoint, --ckpt_minutes). The script passes it to every process of the job's steps with
# `scancel --signal=USR1`: each bridge.py rank then stops after its step. Not SIGTERM to srun: srun
# turns it into SIGKILL for every task. Not SIGTERM to torchrun either: it gives its ranks 30 s,
# then kills them, and a large checkpoint takes longer to write. So torchrun ignores SIGUSR1 (the
# `trap '' USR1` before it) and the ranks keep all 300 s. The script, which knows it was warned,
# requeues the job; a crash is not requeued.
set -u
OUT=${OUT:-$HOME/runs/bridge-$SLURM_JOB_NAME}
GPUS=${SLURM_GPUS_ON_NODE:-1}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=$((20000 + SLURM_JOB_ID % 40000))  # a rendezvous port per job: jobs on one node never share
echo "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $SLURM_JOB_NUM_NODES node(s) x $GPUS" \
     "GPU(s), rendezvous $HEAD:$PORT, run folder $OUT"

warned=0
trap 'warned=1; scancel --signal=USR1 "$SLURM_JOB_ID"' USR1
srun --kill-on-bad-exit=1 bash -c 'trap "" USR1; exec "$@"' task \
    torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node "$GPUS" \
    --rdzv_backend c10d --rdzv_endpoint "$HEAD:$PORT" --rdzv_id "$SLURM_JOB_ID" \
    bridge.py --auto_resume True --out_dir "$OUT" "$@" &
step=$!
wait "$step"
rc=$?
while kill -0 "$step" 2>/dev/null; do  # the trap ended the first wait: wait for the checkpoint
    wait "$step"
    rc=$?
done
if [ "$warned" = 1 ]; then  # torchrun exits 1 when its ranks stop on a signal: go by the warning
    echo "warned by SIGUSR1 (exit $rc): requeueing job $SLURM_JOB_ID; it continues from $OUT/ckpt.pt"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
