#!/usr/bin/env python3
"""Compares two prediction CSVs of retrain's format (path, then per attribute its label and
p_<attribute>_<label> columns), e.g. `retrain eval --predictions` against `retrain predict`,
or `retrain predict` against tests/support/onnxruntime_predict.py.

For every attribute present in both files it prints how many shared images get the same
label and the largest probability difference, and for landmark columns (x1..x5, y1..y5)
the largest difference in pixels; exits 1 if any label differs and --exact.

usage: compare_predictions.py A.csv B.csv [--exact]
"""
import argparse
import csv
import sys

LANDMARKS = [f"{axis}{i}" for axis in "xy" for i in range(1, 6)]


def read(path):
    with open(path, newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--exact", action="store_true", help="exit 1 unless every label agrees")
    args = ap.parse_args()
    a, b = read(args.a), read(args.b)
    shared = sorted(set(a) & set(b))
    if not shared:
        sys.exit(f"{args.a} and {args.b} have no image path in common")
    columns = next(iter(a.values())).keys() & next(iter(b.values())).keys()
    attributes = sorted(c for c in columns if c != "path" and not c.startswith("p_") and c not in LANDMARKS)
    all_agree = True
    for attribute in attributes:
        same = sum(a[p][attribute] == b[p][attribute] for p in shared)
        probs = [c for c in columns if c.startswith(f"p_{attribute}_")]
        diff = max(abs(float(a[p][c]) - float(b[p][c])) for p in shared for c in probs)
        print(f"{attribute}: same label for {same} of {len(shared)} images ({100.0 * same / len(shared):.2f}%), "
              f"largest probability difference {diff:.2e}")
        all_agree &= same == len(shared)
    if set(LANDMARKS) <= columns:
        placed = [p for p in shared if a[p]["x1"] and b[p]["x1"]]
        diff = max((abs(float(a[p][c]) - float(b[p][c])) for p in placed for c in LANDMARKS), default=0.0)
        print(f"landmarks: placed in both files for {len(placed)} of {len(shared)} images, largest difference {diff:.2f} pixels")
    only = len(set(a) ^ set(b))
    if only:
        print(f"({only} images are in only one of the files)")
    sys.exit(1 if args.exact and not all_agree else 0)


if __name__ == "__main__":
    main()
