#!/usr/bin/env python3
"""What a landmark model that ignores the pixels scores on MTFL: the mean training face.

The mean landmarks of training.txt, as fractions of each image's face window (`--crop
face:SCALE`, placed from the annotated landmarks as retrain places it), put back into

  - every training image's own face window: what an undistorted face-crop validation
    rewards without looking at the image (the window is centred on the landmarks);
  - every test image taken whole (`--test-crop original`; MTFL's test images are face crops).

Errors as `retrain train` and scripts/score_predictions.py report them: mean point distance
over the annotated inter-ocular distance, averaged over images; failures above 10%.

usage: landmark_baseline.py MTFL_DIR [--scale 3.2]
"""
import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_predictions import FAILURE, landmark_error  # noqa: E402


def read(list_path):
    """(image path, [x1..x5, y1..y5]) per line of an MTFL annotation file."""
    rows = []
    for line in open(list_path):
        fields = line.split()
        if fields:
            rows.append((list_path.parent / fields[0].replace("\\", "/"), [float(v) for v in fields[1:11]]))
    return rows


def face_window(points, width, height, scale):
    """retrain's face window (src/preprocess.rs `face_window`): a square `scale` eye-to-mouth
    distances wide on the landmarks' centre, shifted inside the image and shrunk to it."""
    cx, cy = sum(points[:5]) / 5, sum(points[5:]) / 5
    eyes = ((points[0] + points[1]) / 2, (points[5] + points[6]) / 2)
    mouth = ((points[3] + points[4]) / 2, (points[8] + points[9]) / 2)
    size = max(1, round(((mouth[0] - eyes[0]) ** 2 + (mouth[1] - eyes[1]) ** 2) ** 0.5 * scale))

    def axis(centre, extent):
        side = min(size, extent)
        return min(max(round(centre - side / 2), 0), extent - side), side

    (x, w), (y, h) = axis(cx, width), axis(cy, height)
    return x, y, w, h


def to_fractions(points, window):
    x, y, w, h = window
    return [(v - x) / w for v in points[:5]] + [(v - y) / h for v in points[5:]]


def to_pixels(fractions, window):
    x, y, w, h = window
    return [x + f * w for f in fractions[:5]] + [y + f * h for f in fractions[5:]]


def report(name, pairs):
    errors = [landmark_error(p, t) for p, t in pairs]
    failures = sum(e > FAILURE for e in errors) / len(errors)
    print(f"{name}: mean error {100 * sum(errors) / len(errors):.2f}% of the inter-ocular distance, "
          f"failures (> {100 * FAILURE:.0f}%) {100 * failures:.1f}% ({len(errors)} images)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mtfl", type=Path)
    parser.add_argument("--scale", type=float, default=3.2, help="face crop width in eye-to-mouth distances")
    args = parser.parse_args()
    train = [(points, face_window(points, *Image.open(path).size, args.scale)) for path, points in read(args.mtfl / "training.txt")]
    fractions = [to_fractions(points, window) for points, window in train]
    mean = [sum(column) / len(fractions) for column in zip(*fractions)]
    report(f"training images, mean face in each face:{args.scale} window", [(to_pixels(mean, w), p) for p, w in train])
    test = [(points, (0, 0, *Image.open(path).size)) for path, points in read(args.mtfl / "testing.txt")]
    report("test images taken whole, mean face in the image", [(to_pixels(mean, w), p) for p, w in test])


if __name__ == "__main__":
    main()
