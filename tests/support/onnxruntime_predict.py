#!/usr/bin/env python3
"""Runs a model exported by `retrain export` with Python's onnxruntime, preprocessing images
with PIL from the model's own metadata alone (what a deployment team would do), and writes
the same CSV as `retrain predict`. Checks the file with onnx.checker first.

The preprocessing is an independent implementation (PIL's resize, not fast_image_resize), so
probabilities differ from `retrain predict` by a little; labels should almost always agree
(compare with tests/support/compare_predictions.py). A model exported with `--pixel-input` does its
own resize and scaling: it gets each decoded image as it is (uint8 RGB, 1 x H x W x 3), and
then agrees with `retrain predict` to float rounding. One exported with `--landmarks` also
places its face or nose crop itself (a plain list of photos is enough) and outputs the
landmarks, written as retrain predict's x1..x5, y1..y5 columns.

usage: onnxruntime_predict.py MODEL.onnx --list LIST [--limit N] [--batch 16] --out preds.csv
       LIST: an MTFL annotation file (landmarks make the nose crop possible) or one path per line
"""
import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the description's keys
import description as desc  # noqa: E402

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "triangle": Image.BILINEAR,
           "bicubic": Image.BICUBIC, "catmullrom": Image.BICUBIC, "lanczos": Image.LANCZOS, "lanczos3": Image.LANCZOS}


def read_list(path):
    root = os.path.dirname(path)
    items = []
    for line in open(path, newline=None):
        fields = line.split()
        if not fields:
            continue
        key = fields[0].replace("\\", "/")
        landmarks = [float(v) for v in fields[1:11]] if len(fields) == 15 else None  # x1..x5, y1..y5
        items.append((key, os.path.join(root, key), landmarks))
    return items


def square_inside(size, cx, cy, w, h):
    """A size x size square centred on (cx, cy), shifted (never padded) to lie inside the
    image and shrunk to it per axis, as retrain's crops are."""
    def axis(centre, extent):
        length = min(size, extent)
        start = min(max(math.floor(centre - length / 2 + 0.5), 0), extent - length)
        return start, length
    (x, cw), (y, ch) = axis(cx, w), axis(cy, h)
    return x, y, x + cw, y + ch


def crop_box(crop, w, h, landmarks):
    """retrain's crop windows: original, nose[:SIZE] (a square on the nose), face[:SCALE] (a
    square SCALE eye-to-mouth distances wide on the mean of the five landmarks)."""
    kind, _, arg = crop.partition(":")
    if kind == "original":
        return 0, 0, w, h
    if landmarks is None:
        raise ValueError(f"crop {crop} needs landmarks: give an MTFL annotation file as --list")
    xs, ys = landmarks[:5], landmarks[5:]
    if kind == "nose":
        return square_inside(int(arg or 150), xs[2], ys[2], w, h)
    if kind == "face":
        eyes = ((xs[0] + xs[1]) / 2, (ys[0] + ys[1]) / 2)
        mouth = ((xs[3] + xs[4]) / 2, (ys[3] + ys[4]) / 2)
        distance = math.hypot(mouth[0] - eyes[0], mouth[1] - eyes[1])
        size = max(math.floor(distance * float(arg or 3.2) + 0.5), 1)
        return square_inside(size, sum(xs) / 5, sum(ys) / 5, w, h)
    raise ValueError(f"unknown crop '{crop}'")


def write_rows(out, heads, chunk, probs, landmarks=None):
    for i, (key, _, _) in enumerate(chunk):
        row = [key]
        for h, p in zip(heads, probs):
            row += [h["labels"][int(np.argmax(p[i]))]] + [f"{v:.6f}" for v in p[i]]
        if landmarks is not None:  # x1..x5, y1..y5 in pixels, as retrain predict writes them
            row += [f"{v:.2f}" for v in landmarks[i]]
        out.writerow(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--list", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    model = onnx.load(a.model)
    onnx.checker.check_model(model)
    meta = desc.read(model)
    heads = json.loads(meta["heads"])
    size = (int(meta["width"]), int(meta["height"]))
    mean = np.array(desc.triple(meta.get("mean"), 0), np.float32)
    std = np.array(desc.triple(meta.get("std"), 1), np.float32)
    crop, layout = meta.get("crop", "original"), meta["layout"].upper()
    session = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
    input_name = meta.get("input_name", session.get_inputs()[0].name)
    items = read_list(a.list)[: a.limit or None]
    header = ["path"] + [c for h in heads for c in [h["attribute"]] + [f"p_{h['attribute']}_{l}" for l in h["labels"]]]
    # a model exported with --landmarks places its crop itself and outputs the landmarks
    located = json.loads(meta["located_by"])["output"] if "located_by" in meta else None
    outputs = [h["output"] for h in heads] + ([located] if located else [])
    if located:
        header += [f"{axis}{i}" for axis in "xy" for i in range(1, 6)]
    with open(a.out, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for start in range(0, len(items), a.batch):
            chunk = items[start:start + a.batch]
            if "pixel_input" in meta:  # one image per run: sizes differ
                probs = [np.concatenate(p) for p in zip(*(session.run(outputs, {input_name: np.asarray(Image.open(path).convert("RGB"))[None]})
                                                           for _, path, _ in chunk))]
                write_rows(out, heads, chunk, probs[:len(heads)], probs[len(heads)] if located else None)
                continue
            pixels = []
            for _, path, landmarks in chunk:
                im = Image.open(path).convert("RGB")
                im = im.crop(crop_box(crop, im.width, im.height, landmarks)).resize(size, FILTERS[meta.get("resize", "bilinear")])
                pixels.append((np.asarray(im, np.float32) / 255.0 - mean) / std)
            x = np.stack(pixels).astype(np.float32)
            if layout == "NCHW":
                x = x.transpose(0, 3, 1, 2)
            write_rows(out, heads, chunk, session.run([h["output"] for h in heads], {input_name: np.ascontiguousarray(x)}))
    print(f"wrote {len(items)} predictions to {a.out} with onnxruntime {ort.__version__}")


if __name__ == "__main__":
    main()
