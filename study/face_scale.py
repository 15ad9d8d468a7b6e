#!/usr/bin/env python3
"""How large MTFL's faces are within their images: image side / eye-to-mouth distance.

    .venv/bin/python study/face_scale.py [MTFL folder, default ../shared/datasets/MTFL]

Prints the 10th/50th/90th percentiles per source folder (lfw_5590, net_7876, AFLW). The
AFLW test images are tight crops, the training ones have background: `--crop face:SCALE`
with SCALE near the test median frames training faces as the test faces are framed.
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def ratios(root: Path, split: str) -> dict:
    out = {}
    for line in (root / f"{split}.txt").read_text().splitlines():
        row = line.split()
        if not row:
            continue
        key, v = row[0].replace("\\", "/"), np.array(row[1:11], dtype=float)
        xs, ys = v[:5], v[5:]
        eyes = np.array([xs[:2].mean(), ys[:2].mean()])
        mouth = np.array([xs[3:].mean(), ys[3:].mean()])
        with Image.open(root / key) as img:
            side = min(img.size)
        out.setdefault(key.split("/")[0], []).append(side / np.linalg.norm(mouth - eyes))
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/MTFL")
    for split in ("training", "testing"):
        for source, r in ratios(root, split).items():
            p10, p50, p90 = np.percentile(r, [10, 50, 90])
            print(f"{split:8} {source:9} {len(r):5} images: side / eye-mouth distance p10 {p10:.2f}  median {p50:.2f}  p90 {p90:.2f}")


if __name__ == "__main__":
    main()
