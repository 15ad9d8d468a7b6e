#!/usr/bin/env bash
# README's test command: installs what is missing (scripts/setup.sh), runs every test suite
# (the Python converter check, then every Rust test, all of them even when one fails), and
# ends with one line: "N passed, N failed, N skipped".
#
# A test whose prerequisite is absent (../shared/datasets/MTFL, .venv, onnx/inception_v3.onnx)
# prints "SKIP <test>: <reason>" and counts as skipped; with CI set it fails instead.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --model || { echo "setup failed"; exit 1; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
passed=0 failed=0

echo "== python: InceptionV3 converter (NumPy reference check, Keras .h5 path)"
if .venv/bin/python tests/support/test_convert_inception.py; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

echo "== cargo test (with the fault-injection feature the crash and interrupt tests need)"
cargo test --release --features fault-injection --no-fail-fast 2>&1 | tee "$log"
cargo_status=${PIPESTATUS[0]}
# put back the binary users run: the same build without fault injection
cargo build --release --quiet || cargo_status=1

# libtest prints "test result: ok. 12 passed; 0 failed; ..." per suite; a skipped test
# returned early after its SKIP line, so libtest counted it as passed.
read -r suite_passed suite_failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } } END { print p + 0, f + 0 }' "$log")
skipped=$(grep -c '^SKIP ' "$log" || true)
passed=$((passed + suite_passed - skipped))
failed=$((failed + suite_failed))
if [ "$cargo_status" != 0 ] && [ "$suite_failed" = 0 ]; then
  echo "cargo test failed before running its tests (see above)"
  failed=$((failed + 1))
fi
if [ "$skipped" -gt 0 ]; then
  echo "skipped:"
  grep '^SKIP ' "$log" | sed 's/^/  /'
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
