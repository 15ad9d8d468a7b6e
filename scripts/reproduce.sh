#!/usr/bin/env bash
# The main job of README: installs what is missing (ONNX Runtime, HDF5, the InceptionV3 model),
# then reproduces the study's tables on MTFL. Resumes from cache/ when run again.
#   scripts/reproduce.sh --mtfl /path/to/MTFL [more retrain reproduce options]
# With --beyond (every attribute, every pipeline) it also converts the FaceRes backbone.
set -euo pipefail
cd "$(dirname "$0")/.."
setup_flags=(--model)
for arg in "$@"; do [ "$arg" = --beyond ] && setup_flags+=(--faceres); done
scripts/setup.sh "${setup_flags[@]}"
exec target/release/retrain reproduce "$@"
