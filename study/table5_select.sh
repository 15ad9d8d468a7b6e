#!/usr/bin/env bash
# Chooses Table 5's crop and distortions on validation alone. Each candidate trains TCDCN on
# smile (Adam, lr 1e-4, batch 64, seed 0, all of training.txt: 7,932 train / 2,068 validation
# images) for E epochs with --no-test, so the test list is never read; the candidate with the
# best validation accuracy (the criterion best.h5 uses) wins. The winner's full runs are
# study/train_table5.sh with its flags, and only they read the test list, once.
#
#   study/table5_select.sh [--mtfl ../shared/datasets/MTFL] [--epochs 45] [--runs runs/table5-select]
#       [--device cpu|cuda] [--limit N (smoke tests)]
set -euo pipefail
cd "$(dirname "$0")/.."

mtfl=../shared/datasets/MTFL; epochs=45; runs=runs/table5-select; device=cpu; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --mtfl) mtfl=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --limit) extra+=(--limit "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x target/release/retrain ] || cargo build --release
art=artifacts/tcdcn-adam-b64
[ -f "$art/manifest.json" ] || .venv/bin/python scripts/make_artifacts.py onnx/tcdcn.onnx --out "$art" --batch 64 --optimizer adam

aug="--flip --random-crop 10 --random-scale 10 --random-brightness 10"
candidates=("original|--crop original" "nose|--crop nose" "face|--crop face" "face-aug|--crop face $aug")
for c in "${candidates[@]}"; do
  name=${c%%|*}; flags=${c#*|}; out=$runs/$name
  resume=()
  [ -f "$out/last.h5" ] && resume=(--resume "$out/last.h5")
  # shellcheck disable=SC2086  # flags is a list of words
  target/release/retrain train --artifacts "$art" --mtfl "$mtfl" --attribute smile --epochs "$epochs" \
    --lr 1e-4 --seed 0 --device "$device" --out "$out" --no-test --quiet $flags "${resume[@]}" "${extra[@]}"
done

echo "| candidate | flags | best epoch | best validation accuracy | lowest validation loss |"
echo "|---|---|---:|---:|---:|"
best=; best_acc=0
for c in "${candidates[@]}"; do
  name=${c%%|*}; flags=${c#*|}
  read -r epoch acc loss < <(.venv/bin/python -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["best_epoch"], r["best_val_accuracy"], r["best_val_loss"])' "$runs/$name/result.json")
  echo "| $name | \`$flags\` | $epoch | $acc | $loss |"
  if .venv/bin/python -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$acc" "$best_acc"; then
    best=$name; best_acc=$acc
  fi
done
echo "chosen on validation: $best (best validation accuracy $best_acc)"
