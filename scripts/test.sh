#!/usr/bin/env bash
# The test command of README: installs what is missing (scripts/setup.sh), then runs every test.
# Tests that need the real MTFL (../shared/datasets/MTFL) say SKIP where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --model   # the InceptionV3 gradient check (tests/finetune.rs) needs the model
echo "== python: InceptionV3 converter (NumPy reference check, Keras .h5 path)"
.venv/bin/python scripts/test_convert_inception.py
echo "== cargo test"
cargo test --release
