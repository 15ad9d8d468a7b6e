#!/usr/bin/env bash
# Table 5 of the study: the two CNNs trained from scratch on MTFL, through training artifacts.
#   TCDCN on smile, 45 epochs, lr 1e-4 (study: 72.5% test accuracy)
#   Cascade-CNN on gender, 125 epochs, lr 1e-4 (study's best: 75%)
# Prints test accuracy and wall time of each; writes runs/table5/<net>/{history.csv,curves.png,
# result.json,model.onnx,best.h5,last.h5}. Re-running resumes from last.h5.
#
#   study/train_table5.sh --device cuda [--mtfl ../shared/datasets/MTFL] [--only tcdcn|cascade]
#       [--tcdcn-epochs 45] [--cascade-epochs 125] [--batch 64] [--threads N] [--runs runs/table5]
#       [--crop original|nose|face] [--optimizer adam|adamw|sgd|rmsprop] [--weight-decay WD]
#       [--lr 1e-4] [--patience N] [--lr-decay F --lr-decay-every E] [--flip] [--random-crop P]
#       [--random-scale P] [--random-brightness P] [--limit N (smoke tests)]
# Artifacts are artifacts/<net>-<optimizer>[-wd<WD>]-b<batch>; runs/table5/<net> keeps one run,
# so give --runs a new folder for each setting (a resume with other distortions is refused).
# On a GPU machine: ORT_DYLIB_PATH=.../libonnxruntime.so.1.31.1 (from onnxruntime-gpu) or
# scripts/setup.sh --gpu first.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu; mtfl=../shared/datasets/MTFL; only=all; tcdcn_epochs=45; cascade_epochs=125; batch=64
runs=runs/table5; crop=original; optimizer=adam; wd=; lr=1e-4
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --mtfl) mtfl=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --tcdcn-epochs) tcdcn_epochs=$2; shift 2 ;;
    --cascade-epochs) cascade_epochs=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --crop) crop=$2; shift 2 ;;
    --threads) extra+=(--threads "$2"); shift 2 ;;
    --optimizer) optimizer=$2; shift 2 ;;
    --weight-decay) wd=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    --patience|--lr-decay|--lr-decay-every|--random-crop|--random-scale|--random-brightness|--limit) extra+=("$1" "$2"); shift 2 ;;
    --flip) extra+=(--flip); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x target/release/retrain ] || cargo build --release
py=.venv/bin/python
[ -x "$py" ] || py=python3   # a GPU box may lack .venv: artifacts made elsewhere travel in artifacts/

run() {  # $1 network, $2 attribute, $3 epochs, $4 crop
  local net=$1 attr=$2 epochs=$3 crop=$4
  local art=artifacts/$net-$optimizer${wd:+-wd$wd}-b$batch out=$runs/$net
  local decay=()
  [ -n "$wd" ] && decay=(--set "weight_decay=$wd")
  [ -f "$art/manifest.json" ] || $py scripts/make_artifacts.py "onnx/$net.onnx" --out "$art" --batch "$batch" \
    --optimizer "$optimizer" "${decay[@]}"
  local resume=()
  [ -f "$out/last.h5" ] && resume=(--resume "$out/last.h5")
  local t0=$SECONDS
  target/release/retrain train --artifacts "$art" --mtfl "$mtfl" --attribute "$attr" --crop "$crop" \
    --epochs "$epochs" --lr "$lr" --device "$device" --out "$out" "${resume[@]}" "${extra[@]}"
  local acc
  acc=$(sed -n 's/.*"test_accuracy": \([0-9.]*\).*/\1/p' "$out/result.json")
  $py study/plot_history.py "$out/history.csv" "$out/curves.png" --test-accuracy "$acc" \
     --title "$net on MTFL $attr ($crop crop, $optimizer${wd:+ wd $wd} lr $lr, batch $batch, $device)" || echo "(no PNG: matplotlib missing)"
  local done
  done=$(sed -n 's/.*"epochs_completed": \([0-9]*\).*/\1/p' "$out/result.json")
  echo "== $net $attr: test accuracy $acc, $done of $epochs epochs, wall time $((SECONDS - t0)) s on $device"
}

if [ "$only" = all ] || [ "$only" = tcdcn ]; then run tcdcn smile "$tcdcn_epochs" "$crop"; fi
if [ "$only" = all ] || [ "$only" = cascade ]; then run cascade_cnn gender "$cascade_epochs" "$crop"; fi
