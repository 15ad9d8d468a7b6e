#!/usr/bin/env python3
"""Gradient check of the InceptionV3 fine-tuning train step, on two images.

The graph checked is phase 2's gradient graph (make_artifacts.gradient_model on the
fine-tuning model of make_finetune.py: the backward pass that train_step.onnx and every
accumulate_bM.onnx contain) at batch 2, two real images.  For each block type of InceptionV3
(stem, 35x35 modules, the two grid reductions, 17x17 modules with 1x7/7x1 convolutions, 8x8
modules with 1x3/3x1 splits, the new Logits layer) it samples parameter tensors (a kernel of
each kernel shape the block type has, and a bias) and compares the directional derivative g.d
along a random direction d over those tensors with the central difference
(L(p + h d) - L(p - h d)) / 2h, both in float64 with onnx's reference evaluator.

Why 75x75 images: float32 central differences cannot check a deep ReLU network (measured here:
a move large enough to rise above float32 rounding crosses ReLU kinks, errors of 1-40%), ONNX
Runtime has no float64 convolution, and onnx's float64 reference evaluator takes ~2 minutes per
299x299 forward pass.  InceptionV3 is convolutional up to its global average pool and takes any
input from 75x75 up (Keras' minimum), so the check builds the same graph - same operators,
reverse rules, parameters and block structure - for 75x75 inputs (1/16 of the work) and resizes
the two images to that.  Float64 differences with h = 1e-7 (relative to each tensor's RMS) are
exact to ~1e-9; the tolerance is 1e-5.  (A step of 1e-6 crossed a ReLU kink in the stem:
error 1.5e-4; 3.7e-3 at 1e-5, 2.5e-9 at 1e-7 - linear in h, as a kink makes it.)

Second, ONNX Runtime's float32 run of the same gradient graph is compared with the float64
gradients on every coordinate of the sampled tensors: tolerance 1e-3 of the largest (float32
unit roundoff 6e-8 through ~100 layers and sums of up to 10^5 terms; the measured error is
printed).  The new Logits kernel is drawn with std 0.05 (not 0.001) so that the backbone's
gradients are not vanishingly small.

  gradcheck_inception.py [--model onnx/inception_v3.onnx] [--images A.jpg B.jpg] [--json]
Exit status 1 if a block type is over its tolerance.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gradcheck.py, beside it
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the product scripts it builds on
import description as desc  # noqa: E402
import make_artifacts as ma  # noqa: E402
import make_finetune as mf  # noqa: E402
from gradcheck import reference_evaluator, to_float64  # noqa: E402

BATCH = 2
SIDE = 75
FD_STEP = 1e-7
TOLERANCE_F64 = 1e-5
TOLERANCE_F32 = 1e-3
HEAD_STD = 0.05


def block_of(model):
    """Conv name -> the first mixedN concatenation downstream (or 'stem' before mixed0)."""
    consumers = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    def downstream_mixed(node):
        seen, frontier = set(), [node]
        while frontier:
            n = frontier.pop(0)
            if n.op_type == "Concat" and n.name.startswith("mixed") and "_" not in n.name:
                return n.name
            for o in n.output:
                for c in consumers.get(o, []):
                    if c.name not in seen:
                        seen.add(c.name)
                        frontier.append(c)
        return None
    return {n.name: downstream_mixed(n) for n in model.graph.node if n.op_type == "Conv"}


BLOCK_TYPES = {
    "stem": ["mixed0"], "35x35 module": ["mixed1", "mixed2"], "grid reduction 35->17": ["mixed3"],
    "17x17 module (1x7, 7x1)": ["mixed4", "mixed5", "mixed6", "mixed7"],
    "grid reduction 17->8": ["mixed8"], "8x8 module (1x3, 3x1 splits)": ["mixed9", "mixed10"],
}


def sample_tensors(model, rng):
    """{block type: [tensor names]}: one kernel per kernel shape and one bias per block type."""
    kernels = {n.name: (n.input[1], n.input[2] if len(n.input) > 2 else None,
                        tuple(next(a.ints for a in n.attribute if a.name == "kernel_shape")))
               for n in model.graph.node if n.op_type == "Conv"}
    blocks = block_of(model)
    # the stem's convolutions feed mixed0's first branch node too: they are the ones no other
    # module's output reaches, i.e. those before the first max-pool chain ends (conv2d_1..5)
    stem = [c for c in kernels if blocks[c] == "mixed0" and int(c.split("_")[-1]) <= 5]
    chosen = {}
    for kind, mixed in BLOCK_TYPES.items():
        convs = stem if kind == "stem" else [c for c in kernels if blocks[c] in mixed and c not in stem]
        by_shape = {}
        for c in convs:
            by_shape.setdefault(kernels[c][2], []).append(c)
        names = [kernels[rng.choice(v)][0] for _, v in sorted(by_shape.items())]
        bias = kernels[rng.choice(convs)][1]
        chosen[kind] = names + ([bias] if bias else [])
    chosen["new Logits layer"] = [mf.KERNEL, mf.BIAS]
    return chosen


def images(paths, spec, side):
    """Two images resized to side x side, laid out NHWC, value = (pixel/255 - mean)/std."""
    out = [np.asarray(Image.open(p).convert("RGB").resize((side, side), Image.BILINEAR), np.float64) / 255.0 for p in paths]
    mean = np.array([float(v) for v in spec.get("mean", "0,0,0").split(",")])
    std = np.array([float(v) for v in spec.get("std", "1,1,1").split(",")])
    return (np.stack(out) - mean) / std


def at_side(model, side):
    """The same network for side x side inputs (the NHWC image input's H and W)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_value = dims[2].dim_value = side
    return model


def default_images():
    mtfl = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "MTFL"
    picks = [mtfl / "lfw_5590" / "Aaron_Eckhart_0001.jpg", mtfl / "AFLW" / "0001-image20056.jpg"]
    if all(p.exists() for p in picks):
        return picks
    rng = np.random.default_rng(7)  # no MTFL: two real JPEG files of smooth random pictures
    tmp = Path(tempfile.mkdtemp())
    paths = []
    for i in range(2):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = tmp / f"picture{i}.jpg"
        Image.fromarray(small).resize((250, 250), Image.BICUBIC).save(path, quality=95)
        paths.append(path)
    return paths


def check(model_path, image_paths, seed=0):
    rng = np.random.default_rng(seed)
    source = onnx.load(model_path)
    forward, _ = mf.finetune_model(source, 2, ["a", "b"], 0.2, seed, "bottleneck")
    for t in forward.graph.initializer:
        if t.name == mf.KERNEL:
            t.CopyFrom(numpy_helper.from_array(rng.normal(0, HEAD_STD, tuple(t.dims)).astype(np.float32), mf.KERNEL))
    forward = at_side(forward, SIDE)
    spec = desc.read(forward)
    trainable = ma.select_trainable(forward, None)
    forward64 = to_float64(forward)
    gradient64, masks, _ = ma.gradient_model(forward64, trainable, BATCH)
    loss64 = reference_evaluator(ma.loss_model(forward64, trainable, BATCH)[0])
    feeds = {"input": images(image_paths, spec, SIDE), "labels": np.array([0, 1], np.int64), "weights": np.ones(BATCH)}
    feeds.update({m["input"]: np.ones(m["shape"]) for m in masks})  # dropout off: deterministic
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in forward64.graph.initializer if t.name in set(trainable)}
    grads = dict(zip([o.name for o in gradient64.graph.output], reference_evaluator(gradient64).run(None, {**feeds, **params})))
    grads32 = float32_gradients(forward, trainable, feeds, params)

    def loss(moved):
        return float(loss64.run([ma.LOSS], {**feeds, **params, **moved})[0])

    results = []
    for kind, tensors in sample_tensors(source, rng).items():
        directions = {n: rng.standard_normal(params[n].shape) * (np.sqrt(np.mean(params[n] ** 2)) or 1.0) for n in tensors}
        analytic = sum(float(np.sum(grads[ma.GRAD_PREFIX + n] * d)) for n, d in directions.items())
        plus = loss({n: params[n] + FD_STEP * d for n, d in directions.items()})
        minus = loss({n: params[n] - FD_STEP * d for n, d in directions.items()})
        numeric = (plus - minus) / (2 * FD_STEP)
        error = abs(analytic - numeric) / max(abs(numeric), 1e-12)
        g64 = np.concatenate([grads[ma.GRAD_PREFIX + n].ravel() for n in tensors])
        g32 = np.concatenate([grads32[ma.GRAD_PREFIX + n].ravel() for n in tensors])
        error32 = float(np.max(np.abs(g32 - g64)) / max(np.max(np.abs(g64)), 1e-30))
        results.append({"block": kind, "tensors": tensors, "analytic": analytic, "finite_difference": numeric,
                        "relative_error": error, "float32_relative_error": error32,
                        "ok": error <= TOLERANCE_F64 and error32 <= TOLERANCE_F32})
    return results


def float32_gradients(forward, trainable, feeds, params):
    """The float32 gradient graph on ONNX Runtime (CPU), as the artifacts run it."""
    gradient32, _, _ = ma.gradient_model(forward, trainable, BATCH)
    session = ort.InferenceSession(gradient32.SerializeToString(), providers=["CPUExecutionProvider"])
    cast = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in {**feeds, **params}.items()}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, cast)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("onnx/inception_v3.onnx"))
    parser.add_argument("--images", type=Path, nargs=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = check(args.model, args.images or default_images())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'block type':30} {'g.d (float64)':>14} {'central diff.':>14} {'rel. error':>10} {'float32 vs 64':>13}  tensors")
        for r in results:
            print(f"{r['block']:30} {r['analytic']:14.7g} {r['finite_difference']:14.7g} {r['relative_error']:10.2e} "
                  f"{r['float32_relative_error']:13.2e}  {', '.join(r['tensors'])}{'' if r['ok'] else '  FAIL'}")
        print(f"max relative error {max(r['relative_error'] for r in results):.2e} (tolerance {TOLERANCE_F64}), "
              f"float32 {max(r['float32_relative_error'] for r in results):.2e} (tolerance {TOLERANCE_F32}), "
              f"{sum(len(r['tensors']) for r in results)} tensors in {len(results)} block types")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
