#!/usr/bin/env python3
"""Scores a prediction CSV of retrain's format (`retrain predict`, `retrain eval
--predictions`) against an MTFL annotation file: accuracy, balanced accuracy (mean recall
over the classes present) and recall per class, for every MTFL attribute in the CSV; and,
when the CSV has landmark columns (`retrain predict --landmarks`: x1..x5, y1..y5), the
landmarks' mean error as a share of the inter-ocular distance (the mean distance of the five
points to the annotated ones over the distance between the annotated eyes, averaged over
images, as `retrain train` reports it) and the failure rate (images above 10%).

A predicted path matches the annotation whose image path it ends with, so predictions made
from a plain list of files (absolute paths, no annotations) are scored too. Images of the
annotation file missing from the CSV (skipped) are counted and reported, not scored.

usage: score_predictions.py PREDICTIONS.csv MTFL/testing.txt
"""
import argparse
import csv
import math
import os
import sys

# MTFL's label codes, in annotation-file column order (11..14), as retrain names them
ATTRIBUTES = [
    ("gender", ["male", "female"]),
    ("smile", ["smiling", "not_smiling"]),
    ("glasses", ["glasses", "no_glasses"]),
    ("pose", ["left_profile", "left", "frontal", "right", "right_profile"]),
]
LANDMARKS = "landmarks"
COLUMNS = [f"{axis}{i}" for axis in "xy" for i in range(1, 6)]
FAILURE = 0.10


def read_truth(path):
    truth = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 15:
                sys.exit(f"{path}:{number}: {len(fields)} fields, an MTFL line has 15")
            codes = [int(c) for c in fields[11:15]]
            t = {name: labels[code - 1] for (name, labels), code in zip(ATTRIBUTES, codes)}
            t[LANDMARKS] = [float(v) for v in fields[1:11]]
            truth[os.path.normpath(fields[0].replace("\\", "/"))] = t
    return truth


def landmark_error(predicted, annotated):
    """Mean point distance / inter-ocular distance; both x1..x5 then y1..y5 (MTFL order:
    left eye, right eye, nose, left and right mouth corner)."""
    distance = sum(math.hypot(predicted[i] - annotated[i], predicted[i + 5] - annotated[i + 5]) for i in range(5)) / 5
    return distance / math.hypot(annotated[1] - annotated[0], annotated[6] - annotated[5])


def describe_errors(errors):
    """The landmark line: mean error and failure rate of per-image errors."""
    failures = sum(e > FAILURE for e in errors) / len(errors)
    return (f"mean error {100 * sum(errors) / len(errors):.2f}% of the inter-ocular distance, "
            f"failures (> {100 * FAILURE:.0f}%) {100 * failures:.1f}%")


def match(path, truth):
    """The annotation key `path` ends with (whole path components), or None."""
    parts = os.path.normpath(path.replace("\\", "/")).split(os.sep)
    for k in range(len(parts)):
        key = os.path.join(*parts[k:])
        if key in truth:
            return key
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions")
    parser.add_argument("annotations")
    args = parser.parse_args()
    truth = read_truth(args.annotations)
    with open(args.predictions, newline="") as f:
        rows = list(csv.DictReader(f))
    pairs = []
    for row in rows:
        key = match(row["path"], truth)
        if key is None:
            sys.exit(f"{args.predictions}: {row['path']} is not in {args.annotations}")
        pairs.append((row, truth[key]))
    print(f"{len(pairs)} of {len(truth)} annotated images predicted ({len(truth) - len(pairs)} missing)")
    for name, labels in ATTRIBUTES:
        if not rows or name not in rows[0]:
            continue
        right = sum(row[name] == t[name] for row, t in pairs)
        recalls = []
        for label in labels:
            support = [row for row, t in pairs if t[name] == label]
            if support:
                recalls.append((label, sum(row[name] == label for row in support) / len(support)))
        balanced = sum(r for _, r in recalls) / len(recalls)
        per_class = ", ".join(f"{label} {100 * r:.1f}%" for label, r in recalls)
        print(f"{name}: accuracy {100 * right / len(pairs):.1f}%, balanced {100 * balanced:.1f}% ({per_class})")
    if rows and all(c in rows[0] for c in COLUMNS):
        errors = [landmark_error([float(row[c]) for c in COLUMNS], t[LANDMARKS]) for row, t in pairs]
        print(f"landmarks: {describe_errors(errors)}")


if __name__ == "__main__":
    main()
