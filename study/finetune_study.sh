#!/usr/bin/env bash
# The study's second approach: InceptionV3 fine-tuned on MTFL in two phases (its Table 2):
#   phase 1: the new Logits layer alone, 1,000 RMSprop steps, weight decay 4e-5, batch 100
#            (lr 0.001 on standardised bottlenecks; the study's 0.01 was for raw ones)
#   phase 2: every layer, 500 steps, lr 0.001
# for each attribute (default smile and gender), through scripts/make_finetune.py's artifacts
# and `retrain finetune`. Writes runs/finetune/<attribute>-<crop>/{result.json,history.csv,
# model.onnx,<attribute>.head.onnx,phase1/,phase2/}; `retrain reproduce` reports them beside the
# study. Re-running an attribute whose result.json exists skips it.
#
#   study/finetune_study.sh --mtfl DIR [--device cuda] [--attributes smile,gender]
#       [--crop original] [--runs runs/finetune] [--train-from LAYER]
#       [-- any other `retrain finetune` flags]
# --train-from mixed9: phase 2 trains InceptionV3's top two blocks only (Keras' recipe) on
# activations cached once per image below them (runs/finetune/<attribute>-<crop>-from-mixed9).
# A phase-2 step of batch 100 costs ~35 s on an idle 2-core CPU with `-- --micro-batch 8` (the
# fastest there; docs/finetune.md), about 5 hours for the 500 steps: use a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

mtfl=../shared/datasets/MTFL; device=cpu; attributes=smile,gender; crop=original; runs=runs/finetune; from=
python=${PYTHON:-.venv/bin/python}; model=onnx/inception_v3.onnx; artifacts=artifacts/inception-finetune
while [ $# -gt 0 ]; do
  case "$1" in
    --mtfl) mtfl=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --attributes) attributes=$2; shift 2 ;;
    --crop) crop=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --train-from) from=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

[ -f "$model" ] || { echo "$model is missing: run scripts/setup.sh --model" >&2; exit 1; }
partial=(); suffix=
if [ -n "$from" ]; then partial=(--train-from "$from"); suffix=-from-$from; fi
if [ ! -f "$artifacts/finetune.json" ] || { [ -n "$from" ] && ! grep -q "\"$from\": {" "$artifacts/finetune.json"; }; then
  "$python" scripts/make_finetune.py "$model" --classes 2 --out "$artifacts" "${partial[@]}"
fi
for attribute in ${attributes//,/ }; do
  out=$runs/$attribute-$crop$suffix
  if [ -f "$out/result.json" ]; then echo "== $attribute: $out/result.json exists, skipped"; continue; fi
  resume=()
  if [ -f "$out/phase2/last.h5" ]; then resume=(--resume "$out/phase2/last.h5")
  elif [ -f "$out/phase1/last.h5" ]; then resume=(--resume "$out/phase1/last.h5"); fi
  echo "== $attribute ($crop crop) on $device"
  start=$SECONDS
  target/release/retrain finetune --artifacts "$artifacts" --model "$model" --mtfl "$mtfl" \
    --attribute "$attribute" --crop "$crop" --device "$device" --out "$out" "${partial[@]}" "${resume[@]}" "$@"
  echo "== $attribute: $((SECONDS - start)) s wall"
done
