#!/usr/bin/env python3
"""scikit-learn baseline for retrain's softmax heads, on the same HDF5 caches.

Reads /features and /labels of a training and a test cache written by `retrain extract`
(h5py), standardises with StandardScaler (fitted on the training rows), fits
LogisticRegression(C, lbfgs) per attribute and scores it on the test cache. Rows whose label is
not one of the attribute's codes (-1 = unknown) are left out, as retrain does.

Prints one JSON object per attribute (one line each), or writes a list with --json FILE:
  attribute, fit_seconds (scaler + fit, as retrain's train_seconds), accuracy, per-class
  precision/recall, n_iter, sklearn version, dtype, threads note.

usage: sklearn_head.py --train TRAIN.h5 --test TEST.h5 [--attribute gender --attribute smile]
                       [--c 0.01] [--class-weight none|balanced] [--max-iter 1000] [--json OUT.json]
"""
import argparse
import json
import sys
import time

import h5py
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

# MTFL codes and retrain's names for them (src/head/classes.rs).
MTFL_CLASSES = {
    "gender": [(1, "male"), (2, "female")],
    "smile": [(1, "smiling"), (2, "not_smiling")],
    "glasses": [(1, "glasses"), (2, "no_glasses")],
    "pose": [(1, "left_profile"), (2, "left"), (3, "frontal"), (4, "right"), (5, "right_profile")],
}


def read_cache(path, attribute):
    """Features and label codes of the committed rows that carry a known label."""
    with h5py.File(path, "r") as f:
        rows = int(f.attrs["rows_committed"])
        columns = f.attrs["label_columns"]
        columns = (columns.decode() if isinstance(columns, bytes) else columns).split(",")
        if attribute not in columns:
            sys.exit(f"{path}: attribute '{attribute}' is not in this cache (it has: {', '.join(columns)})")
        x = f["features"][:rows]
        y = f["labels"][:rows, columns.index(attribute)]
    codes = [c for c, _ in MTFL_CLASSES.get(attribute, [])] or sorted(set(y[y >= 0].tolist()))
    keep = np.isin(y, codes)
    return x[keep], y[keep], codes


def run(train, test, attribute, c, class_weight, max_iter):
    x_train, y_train, codes = read_cache(train, attribute)
    x_test, y_test, _ = read_cache(test, attribute)
    started = time.perf_counter()
    scaler = StandardScaler().fit(x_train)
    z_train = scaler.transform(x_train)
    weights = None if class_weight == "none" else class_weight
    clf = LogisticRegression(C=c, class_weight=weights, max_iter=max_iter).fit(z_train, y_train)
    fit_seconds = time.perf_counter() - started
    predicted = clf.predict(scaler.transform(x_test))
    names = dict(MTFL_CLASSES.get(attribute, []))
    classes = []
    for code in codes:
        tp = int(np.sum((predicted == code) & (y_test == code)))
        n_pred, n_true = int(np.sum(predicted == code)), int(np.sum(y_test == code))
        classes.append({
            "label": names.get(code, str(code)),
            "support": n_true,
            "precision": tp / n_pred if n_pred else None,
            "recall": tp / n_true if n_true else None,
        })
    return {
        "attribute": attribute,
        "solver": "sklearn",
        "fit_seconds": fit_seconds,
        "accuracy": float(np.mean(predicted == y_test)),
        "test_rows": int(len(y_test)),
        "train_rows": int(len(y_train)),
        "classes": classes,
        "n_iter": int(np.max(clf.n_iter_)),
        "C": c,
        "class_weight": class_weight,
        "max_iter": max_iter,
        "dtype": str(z_train.dtype),
        "sklearn": sklearn.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--attribute", action="append", help="repeatable [default: gender and smile]")
    ap.add_argument("--c", type=float, default=0.01, help="inverse L2 strength [0.01, retrain's default]")
    ap.add_argument("--class-weight", choices=["none", "balanced"], default="none", help="as retrain's --class-weight [none]")
    ap.add_argument("--max-iter", type=int, default=1000, help="lbfgs iterations at most [1000]")
    ap.add_argument("--json", help="write all results as a JSON list here")
    a = ap.parse_args()
    results = []
    for attribute in a.attribute or ["gender", "smile"]:
        r = run(a.train, a.test, attribute, a.c, a.class_weight, a.max_iter)
        print(json.dumps(r), flush=True)
        results.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
