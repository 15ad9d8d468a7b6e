#!/usr/bin/env python3
"""What a landmark model that ignores the pixels scores on MTFL: the mean training face.

The mean landmarks of training.txt, as fractions of each image's face window (`--crop
face:SCALE`, placed from the annotated landmarks as retrain places it: tests/support/onnxruntime_predict.py's
`crop_box`), put back into

  - every training image's own face window: what an undistorted face-crop validation
    rewards without looking at the image (the window is centred on the landmarks);
  - every test image taken whole (`--test-crop original`; MTFL's test images are face crops).

Errors as `retrain train` and tests/support/score_predictions.py report them: mean point distance
over the annotated inter-ocular distance, averaged over images; failures above 10%.

usage: landmark_baseline.py MTFL_DIR [--scale 3.2]
"""
import argparse
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))  # the scripts the tests check retrain against
from onnxruntime_predict import crop_box, read_list  # noqa: E402
from score_predictions import describe_errors, landmark_error  # noqa: E402


def windows(list_path, crop):
    """(annotated landmarks, crop window x, y, width, height) per image of an MTFL list, the
    window placed as retrain places `crop`."""
    out = []
    for _, path, points in read_list(str(list_path)):
        x0, y0, x1, y1 = crop_box(crop, *Image.open(path).size, points)
        out.append((points, (x0, y0, x1 - x0, y1 - y0)))
    return out


def to_fractions(points, window):
    x, y, w, h = window
    return [(v - x) / w for v in points[:5]] + [(v - y) / h for v in points[5:]]


def to_pixels(fractions, window):
    x, y, w, h = window
    return [x + f * w for f in fractions[:5]] + [y + f * h for f in fractions[5:]]


def report(name, mean, images):
    """The error of `mean` (fractions) put into each image's window."""
    errors = [landmark_error(to_pixels(mean, window), points) for points, window in images]
    print(f"{name}: {describe_errors(errors)} ({len(errors)} images)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mtfl", type=Path)
    parser.add_argument("--scale", type=float, default=3.2, help="face crop width in eye-to-mouth distances")
    args = parser.parse_args()
    train = windows(args.mtfl / "training.txt", f"face:{args.scale}")
    fractions = [to_fractions(points, window) for points, window in train]
    mean = [sum(column) / len(fractions) for column in zip(*fractions)]
    report(f"training images, mean face in each face:{args.scale} window", mean, train)
    report("test images taken whole, mean face in the image", mean, windows(args.mtfl / "testing.txt", "original"))


if __name__ == "__main__":
    main()
