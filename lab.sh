#!/usr/bin/env bash
# The paper's comparison: five arms, one fine-tune budget each, then a verdict for each arm.
#   scratch          a GPT-2-shaped network from scratch, fine-tuned
#   gpt2             OpenAI's GPT-2, fine-tuned without a bridge
#   gpt2_bridge      GPT-2 bridged on random labels (every block), then fine-tuned
#   gpt2_bridge_p5   GPT-2 bridged with --freeze 0-5 (wpe + blocks 0-4, the paper's partial bridge)
#   scratch_bridge   the scratch network bridged, then fine-tuned: language weights, or the bridge?
#
#   bash lab.sh lab                                   # CIFAR-10 + OpenAI's GPT-2 small, at 32 px
#   bash lab.sh paper                                 # gpt2-medium, the paper's recipe: GPU-days
#   GPT2=DIR DATA=DIR bash lab.sh lab --device cpu    # offline: an HF GPT-2 folder, an image folder
#
# Every run has --auto_resume True: the same command again trains no finished arm twice and resumes
# a stopped one; into a folder of other flags it stops with one line. OUT= sets the folder.
set -euo pipefail
cd "$(dirname "$0")"
scale=${1:-}
shift || true
extra=("$@")  # bridge.py flags for every run (--device cpu, ...)
case "$scale" in
  lab)    # 8 runs x 100 steps x 32 images; each evaluated on 1,000 test images
    GPT2=${GPT2:-gpt2}
    common=(--subset 2000 --test_subset 1000 --img_size 32 --patch_size 8 --batch_size 32
            --aug crop --warmup_epochs 0.5 --lr 3e-4 --max_iters 100 --eval_interval 100)
    tune=() ;;
  paper)  # bridge.py's defaults are the paper's recipe; fine-tunes: 200 epochs (the author's code)
    GPT2=${GPT2:-gpt2-medium}
    common=()
    tune=(--epochs 200) ;;
  *)
    echo "usage: bash lab.sh lab|paper [bridge.py flags for every run]" >&2
    exit 2 ;;
esac
data=()
if [ -n "${DATA:-}" ]; then data=(--dataset folder --data_dir "$DATA"); fi
out=${OUT:-out/$scale}
# the scratch arms take the GPT-2's shape; the partial arm freezes 0-5, or on a GPT-2 of fewer
# than 6 blocks all but its last block
shape=$(python -c "import json, os, sys, model
s = sys.argv[1]
if s not in model.OFFICIAL and not os.path.isfile(s + '/config.json'):
    sys.exit(f'error: GPT2={s}: use gpt2, gpt2-medium, ... or a GPT-2 folder with config.json')
c = model.OFFICIAL.get(s) or json.load(open(s + '/config.json'))
print(s if s in model.OFFICIAL else f\"{c['n_layer']}x{c['n_embd']}\", f\"0-{min(5, c['n_layer'] - 1)}\")
" "$GPT2")
read -r MODEL FREEZE <<< "$shape"
echo "$scale: $GPT2 and scratch $MODEL, partial bridge --freeze $FREEZE; 3 bridges, then 5" \
     "fine-tunes into $out; each run says its cost first"

arm() {  # one run of bridge.py: the scale's flags, the arm's, the data, the user's
  python bridge.py "${common[@]+"${common[@]}"}" --auto_resume True "$@" \
    "${data[@]+"${data[@]}"}" "${extra[@]+"${extra[@]}"}"
}
arm --stage bridge --init_from "$GPT2" --out_dir "$out/bridge"
python -c "import json, sys
t = json.loads(open(sys.argv[1]).readlines()[-1])['elapsed_s']
print(f'the first run took {t:.0f} s: the 8 take about {8 * t / 60:.1f} minutes here')" \
    "$out/bridge/metrics.jsonl"
arm --stage bridge --init_from "$GPT2" --freeze "$FREEZE" --out_dir "$out/bridge_p5"
arm --stage bridge --init_from scratch --model "$MODEL" --out_dir "$out/bridge_scratch"
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
