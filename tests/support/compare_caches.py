#!/usr/bin/env python3
"""Compare two retrain caches with h5py, dataset by dataset, byte for byte.

Usage: compare_caches.py A.h5 B.h5   (exit 1 if any dataset differs)
Used to check that a killed-and-resumed extraction, or merged shards, equal one uninterrupted run.
"""
import sys

import h5py

DATASETS = ("features", "paths", "labels", "landmarks", "source_index", "skipped")


def same(x, y):
    if x.shape != y.shape:
        return False
    if x.dtype.kind == "O":
        return list(x) == list(y)
    return x.tobytes() == y.tobytes()


def main(a_path, b_path):
    ok = True
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        for name in DATASETS:
            x, y = a[name][:], b[name][:]
            verdict = "identical" if same(x, y) else "DIFFERENT"
            ok &= verdict == "identical"
            print(f"{name:13} {str(x.shape):14} {str(x.dtype):8} {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
