#!/usr/bin/env python3
"""How retrain's default C (0.01) for the linfa head was chosen: scikit-learn's
LogisticRegression (the same problem linfa solves, see src/head/linfa.rs) on a random 10%
validation split of a training cache, for several C, per attribute. The test cache is not used.

usage: sklearn_choose_c.py TRAIN.h5 [--c 1 0.1 0.01 0.001] [--seed 0]
"""
import argparse
import time

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train")
    ap.add_argument("--c", type=float, nargs="+", default=[1, 0.1, 0.01, 0.001])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with h5py.File(a.train, "r") as f:
        rows = int(f.attrs["rows_committed"])
        x, labels = f["features"][:rows], f["labels"][:rows]
    order = np.random.default_rng(a.seed).permutation(rows)
    val, tr = order[: rows // 10], order[rows // 10:]
    scaler = StandardScaler().fit(x[tr])
    x_tr, x_val = scaler.transform(x[tr]), scaler.transform(x[val])
    for column, name in ((0, "gender"), (1, "smile")):
        for c in a.c:
            started = time.perf_counter()
            clf = LogisticRegression(C=c, max_iter=1000).fit(x_tr, labels[tr, column])
            print(f"{name} C={c}: validation accuracy {clf.score(x_val, labels[val, column]):.4f}, "
                  f"{int(np.max(clf.n_iter_))} iterations, {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
