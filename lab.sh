#!/usr/bin/env bash
# The paper's comparison: five arms with one fine-tune budget each, then their summary.
#   scratch          a GPT-2-shaped network from scratch, fine-tuned
#   gpt2             OpenAI's GPT-2, fine-tuned without a bridge
#   gpt2_bridge      GPT-2 bridged on random labels (every block), then fine-tuned
#   gpt2_bridge_p5   GPT-2 bridged with blocks 0-4 and wpe frozen (the paper's partial), fine-tuned
#   scratch_bridge   the scratch network bridged, then fine-tuned: language weights, or the bridge?
#
#   bash lab.sh lab      # GPT-2 small, 2,000 CIFAR-10 training images at 32 px: a lab on a CPU
#   bash lab.sh paper    # gpt2-medium, the paper's CIFAR-10 recipe: GPU-days
#   GPT2=dir/gpt2 MODEL=gpt2 bash lab.sh lab --device cpu   # a local GPT-2; flags for every run
#
# Every run has --auto_resume True: after a kill, the same command again trains no finished arm a
# second time and resumes the stopped one. The summary is analysis.py compare: a table, a figure.
set -euo pipefail
cd "$(dirname "$0")"
scale=${1:-}
shift || true
extra=("$@")  # bridge.py flags for every run: --device cpu, --dataset folder --data_dir X, ...
case "$scale" in
  lab)  # sized from FLOPs: GPT-2 small at 16 tokens costs 8.2 GFLOP a trained image (README)
    GPT2=${GPT2:-gpt2}
    MODEL=${MODEL:-gpt2}
    common=(--subset 2000 --test_subset 1000 --img_size 32 --patch_size 8 --batch_size 32
            --aug crop --warmup_epochs 0.5 --lr 3e-4)
    bridge=(--max_iters 100 --eval_interval 100)
    tune=("${bridge[@]}") ;;
  paper)  # bridge.py's defaults are the paper's recipe; fine-tunes: 200 epochs (the author's code)
    GPT2=${GPT2:-gpt2-medium}
    MODEL=${MODEL:-gpt2-medium}
    common=()
    bridge=()
    tune=(--epochs 200) ;;
  *)
    echo "usage: bash lab.sh lab|paper [bridge.py flags for every run]" >&2
    exit 2 ;;
esac
out=${OUT:-out/$scale}
echo "$scale: 3 bridges, then 5 fine-tunes, into $out; each run says its cost (steps, FLOPs) first"
if [ "$scale" = lab ]; then
  echo "lab: 8 runs x 100 steps x 32 images = 25,600 trained images, 2.1e14 FLOPs with GPT-2 small;"
  echo "     about 18 minutes on one core of a CPU with bfloat16 instructions (27 images/s, README)"
fi

arm() {  # one run of bridge.py: the scale's flags, the arm's, the user's
  python bridge.py "${common[@]+"${common[@]}"}" --auto_resume True "$@" \
    "${extra[@]+"${extra[@]}"}"
}
arm --stage bridge --init_from "$GPT2" --out_dir "$out/bridge" "${bridge[@]+"${bridge[@]}"}"
arm --stage bridge --init_from "$GPT2" --freeze 0-5,wpe --out_dir "$out/bridge_p5" \
  "${bridge[@]+"${bridge[@]}"}"
arm --stage bridge --init_from scratch --model "$MODEL" --out_dir "$out/bridge_scratch" \
  "${bridge[@]+"${bridge[@]}"}"
arm --stage finetune --init_from scratch --model "$MODEL" --out_dir "$out/scratch" \
  "${tune[@]+"${tune[@]}"}"
arm --stage finetune --init_from "$GPT2" --out_dir "$out/gpt2" "${tune[@]+"${tune[@]}"}"
arm --stage finetune --init_from "$out/bridge/ckpt.pt" --out_dir "$out/gpt2_bridge" \
  "${tune[@]+"${tune[@]}"}"
arm --stage finetune --init_from "$out/bridge_p5/ckpt.pt" --out_dir "$out/gpt2_bridge_p5" \
  "${tune[@]+"${tune[@]}"}"
arm --stage finetune --init_from "$out/bridge_scratch/ckpt.pt" --out_dir "$out/scratch_bridge" \
  "${tune[@]+"${tune[@]}"}"
python analysis.py compare "$out/scratch" "$out/gpt2" "$out/gpt2_bridge" "$out/gpt2_bridge_p5" \
  "$out/scratch_bridge" --out "$out/compare"
