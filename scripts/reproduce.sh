#!/usr/bin/env bash
# The main job of README: installs what is missing (ONNX Runtime, HDF5, the InceptionV3 model),
# then reproduces the study's tables on MTFL. Resumes from cache/ when run again.
#   scripts/reproduce.sh --mtfl /path/to/MTFL [more retrain reproduce options]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --model
exec target/release/retrain reproduce "$@"
