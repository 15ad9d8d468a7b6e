#!/usr/bin/env bash
# The main job of README: installs what is missing (ONNX Runtime, HDF5, the InceptionV3 model),
# then reproduces the study's tables on MTFL. Resumes from cache/ when run again.
#   scripts/reproduce.sh --mtfl /path/to/MTFL [more retrain reproduce options]
# With --beyond (every attribute, every pipeline) it also converts the FaceRes backbone and,
# where RUNS/landmarks-faceres has none yet, fits the landmark model that places the face crop
# on plain photos and the FaceRes backbones with the landmarks' geometry in their bottleneck
# (scripts/landmark_regressor.py; training.txt only, about 7 minutes); without --model, the
# report compares InceptionV3, FaceRes and those backbones (geometry alone, and with its
# products up to degree 3).
set -euo pipefail
cd "$(dirname "$0")/.."
setup_flags=(--model)
beyond=0 mtfl="" runs=runs models=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --beyond) beyond=1 setup_flags+=(--faceres) ;;
    --mtfl) mtfl="${args[i + 1]:-}" ;;
    --runs) runs="${args[i + 1]:-}" ;;
    --model) models="${args[i + 1]:-}" ;;
  esac
done
scripts/setup.sh "${setup_flags[@]}"
if [ "$beyond" = 1 ] && [ -n "$mtfl" ] && [ ! -f "$runs/landmarks-faceres/faceres-geometry3.onnx" ]; then
  .venv/bin/python scripts/landmark_regressor.py onnx/faceres.onnx "$mtfl" \
    --layer conv_pw_11_relu/clip_by_value:0 --out "$runs/landmarks-faceres"
fi
if [ "$beyond" = 1 ] && [ -z "$models" ] && [ -f "$runs/landmarks-faceres/faceres-geometry.onnx" ]; then
  geometry="$runs/landmarks-faceres/faceres-geometry.onnx"
  [ -f "$runs/landmarks-faceres/faceres-geometry3.onnx" ] && geometry+=",$runs/landmarks-faceres/faceres-geometry3.onnx"
  set -- "$@" --model "onnx/inception_v3.onnx,onnx/faceres.onnx,$geometry"
fi
exec target/release/retrain reproduce "$@"
