#!/usr/bin/env python3
"""Landmark error of a file exported with --landmarks, with and without mirror averaging, on the
validation share of MTFL's training.txt, each face framed as MTFL's test photos are.

  landmark_mirror_validation.py MODEL.onnx MTFL [--validation-percent 10] [--seed 0] [--scale 3.2]

MODEL: exported with `--landmarks RUN/model.onnx --no-landmark-mirror` (it refuses a file that
averages already).

The validation share is retrain's (src/dataset/split.rs: SHA-256 of the seed and the file
name), so a landmark model trained by `retrain train` (20% held out, same seed) never saw these
faces. Each image is cut to its face:SCALE window from the annotated landmarks (a square of
SCALE eye-to-mouth distances on their mean, shifted into the image) and given to the file as
plain pixels; the file's own estimate is compared with the file run on the mirrored crop and
averaged with it (the mirror's points flipped back), which is what `--no-landmark-mirror` turns
off inside the file. Error: mean distance of the five points over the inter-ocular distance;
failures: images above 10%.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import description as desc  # noqa: E402
from landmark_regressor import held_out  # noqa: E402  retrain's split (src/dataset/split.rs)

MIRROR_ORDER = [1, 0, 2, 4, 3]  # left/right eye and mouth corner trade places


def face_window(points, scale, width, height):
    x, y = points[:5], points[5:]
    distance = np.hypot((x[3] + x[4]) / 2 - (x[0] + x[1]) / 2, (y[3] + y[4]) / 2 - (y[0] + y[1]) / 2)
    size = max(round(distance * scale), 1)

    def axis(centre, extent):
        n = min(size, extent)
        return min(max(round(centre - n / 2), 0), extent - n), n

    (x0, w), (y0, h) = axis(x.mean(), width), axis(y.mean(), height)
    return x0, y0, w, h


def error(truth, placed):
    iod = np.hypot(truth[1] - truth[0], truth[6] - truth[5])
    return np.hypot(truth[:5] - placed[:5], truth[5:] - placed[5:]).mean() / iod


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("mtfl", type=Path)
    ap.add_argument("--validation-percent", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=3.2)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    located = json.loads(desc.from_session(session).get("located_by", "{}"))
    if located.get("mirror"):
        raise SystemExit(f"{a.model} averages with the mirror already: export it with --no-landmark-mirror")
    run = lambda pixels: session.run(["landmarks"], {"pixels": pixels[None]})[0][0]
    rows = [t.split() for t in (a.mtfl / "training.txt").read_text().splitlines() if len(t.split()) >= 15]
    plain, averaged = [], []
    for t in (t for t in rows if held_out(t[0], a.seed, a.validation_percent)):
        image = np.asarray(Image.open(a.mtfl / t[0].replace("\\", "/")).convert("RGB"))
        points = np.array([float(v) for v in t[1:11]])
        x0, y0, w, h = face_window(points, a.scale, image.shape[1], image.shape[0])
        crop = np.ascontiguousarray(image[y0:y0 + h, x0:x0 + w])
        truth = np.concatenate([points[:5] - x0, points[5:] - y0])
        own = run(crop)
        back = run(np.ascontiguousarray(crop[:, ::-1]))
        back = np.concatenate([(w - back[:5])[MIRROR_ORDER], back[5:][MIRROR_ORDER]])
        plain.append(error(truth, own))
        averaged.append(error(truth, (own + back) / 2))
    plain, averaged = np.array(plain), np.array(averaged)
    print(f"{len(plain)} validation faces (face:{a.scale} windows), seed {a.seed}")
    print(f"file as it is: mean error {100 * plain.mean():.2f}% (failures {100 * (plain > 0.1).mean():.1f}%)")
    print(f"averaged with the mirrored crop: mean error {100 * averaged.mean():.2f}% (failures {100 * (averaged > 0.1).mean():.1f}%)")


if __name__ == "__main__":
    main()
