#!/usr/bin/env python3
"""A landmark model from a pretrained backbone: ridge regression of the five MTFL landmarks on
the backbone's spatial features, written as one ONNX file that `retrain predict --landmarks`,
`retrain export --landmarks` and `retrain reproduce --beyond` take.

  landmark_regressor.py BACKBONE.onnx MTFL --layer TENSOR --out RUN
      [--scale 3.2] [--jitter-scale 0.85,1.2] [--jitter-shift 0.1] [--ridge 1e3,3e3,1e4,3e4,1e5]
      [--validation-percent 10] [--seed 0] [--limit N] [--batch 32] [--threads N]
      [--geometry-degrees 1,3]

BACKBONE carries retrain's description in its metadata (`retrain.layout`, `height`, `width`,
`mean`, `std`; `scripts/convert_faceres.py` writes it), TENSOR is one of its intermediate
feature maps (for FaceRes `conv_pw_11_relu/clip_by_value:0`, 14x14x512: the 7x7 map after the
last blocks places the points half as well on validation).

Each training image of MTFL's training.txt is cut once to its face:SCALE window (a square of
SCALE eye-to-mouth distances on the landmarks' mean, as retrain's face crop) whose side is
scaled by a factor drawn from --jitter-scale and whose centre is moved by up to --jitter-shift
of the side, seeded: a window placed from an estimate, like the second pass of `predict
--landmarks` and like a face detector's box, is not centred on the true landmarks, and a model
trained on exact windows learns the window instead of the face (measured on validation: 3.3%
error on exact windows, 25% on jittered ones). Targets are the landmarks as fractions of the
window, the model's input resized from it.

The fit: ridge regression in its dual form (one Gram matrix of the training rows, one solve per
candidate strength), the strength chosen by the mean error on the validation share of
training.txt (retrain's split: SHA-256 of the seed and the file name, the share `retrain
reproduce` holds out), its windows jittered the same way with their own seed. testing.txt is
never read here.

RUN/model.onnx: the backbone up to TENSOR, then Flatten, MatMul, Add -> output `landmarks`
[N, 10] (x1..x5, y1..y5 as fractions of the input), with the backbone's description and
`retrain.crop` = face:SCALE. RUN/BACKBONE-geometry.onnx (where the backbone's description names
a bottleneck): the whole backbone, whose bottleneck `features_geometry` is its own followed by
11 values of the landmarks it places on the same input (the five points relative to the eyes'
centre and the inter-ocular distance, over the eye-to-mouth distance), for heads of attributes
the face's geometry shows, such as head pose; `extract`, `train-head`, `export` and
`reproduce --beyond --model` take it as any backbone. RUN/BACKBONE-geometry3.onnx (per
--geometry-degrees, default 1,3) is the same with the 11 values followed by all their products
up to degree 3 (363 values in all): heads that are linear in them can bend their borders,
which the validation share of `reproduce --beyond` prefers for head pose and smile.
RUN/result.json: the settings, every candidate's validation error, the error of the training
mean shape on the same windows (the baseline a regressor must beat) and `val_tasks` with the
chosen one's (`retrain reproduce --beyond` reads it).
"""

import argparse
import hashlib
import json
import struct
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from PIL import Image

import description as desc
from make_artifacts import prune_unused

OUTPUT = "landmarks"
GEOMETRY = "landmark_geometry"
WITH_GEOMETRY = "features_geometry"
GEOMETRY_VALUES = 11

SPLIT_BUCKETS = (1 << 27) - 1


def held_out(name, seed, percent):
    """Whether retrain's split (src/dataset/split.rs) holds `name` out: SHA-256 of the seed and
    the file name, the part before `_nohash_` only."""
    stem = name.replace("\\", "/").rsplit("/", 1)[-1].split("_nohash_")[0]
    digest = hashlib.sha256(struct.pack("<Q", seed) + stem.encode()).digest()
    return (int.from_bytes(digest[:8], "little") % (SPLIT_BUCKETS + 1)) * 100.0 / SPLIT_BUCKETS < percent


def read_rows(mtfl):
    rows = []
    for number, line in enumerate((mtfl / "training.txt").read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 11:
            raise SystemExit(f"{mtfl / 'training.txt'}:{number}: {len(parts)} columns, expected a path and 10 landmark values")
        rows.append((parts[0].replace("\\", "/"), np.array([float(v) for v in parts[1:11]], np.float64)))
    return rows


def triple(d, key, default):
    return np.array(desc.triple(d.get(key), default), np.float32)


class Input:
    """The backbone's input as retrain's description says (src/model.rs input_spec)."""

    def __init__(self, d, backbone, model):
        missing = [k for k in ("layout", "height", "width") if k not in d]
        if missing:
            raise SystemExit(f"{backbone}: its metadata lacks {', '.join(desc.PREFIX + k for k in missing)} (see scripts/convert_faceres.py)")
        self.nchw = d["layout"].upper() == "NCHW"
        self.size = (int(d["width"]), int(d["height"]))
        self.mean, self.std = triple(d, "mean", 0), triple(d, "std", 1)
        self.name = d.get("input_name") or model.graph.input[0].name

    def tensor(self, crops):
        x = (np.stack([np.asarray(c, np.float32) for c in crops]) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.nchw else x


def window(points, scale, rng, jitter_scale, jitter_shift):
    """A jittered face:SCALE square (x0, y0, side), in image pixels."""
    x, y = points[:5], points[5:]
    distance = np.hypot((x[3] + x[4]) / 2 - (x[0] + x[1]) / 2, (y[3] + y[4]) / 2 - (y[0] + y[1]) / 2)
    side = max(distance * scale * rng.uniform(*jitter_scale), 1.0)
    cx = x.mean() + rng.uniform(-jitter_shift, jitter_shift) * side
    cy = y.mean() + rng.uniform(-jitter_shift, jitter_shift) * side
    side = round(side)
    return round(cx - side / 2), round(cy - side / 2), side


def features(session, spec, layer, mtfl, rows, a, seed, what):
    """Features and targets of one jittered window per row (outside the image: black, as PIL crops)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    start = time.time()
    for first in range(0, len(rows), a.batch):
        crops, targets = [], []
        for path, points in rows[first:first + a.batch]:
            x0, y0, side = window(points, a.scale, rng, a.jitter_scale, a.jitter_shift)
            try:
                image = Image.open(mtfl / path).convert("RGB")
            except (OSError, ValueError) as e:  # reported and skipped, as retrain skips a bad image
                print(f"skipped {mtfl / path}: {e}", file=sys.stderr)
                continue
            crops.append(image.crop((x0, y0, x0 + side, y0 + side)).resize(spec.size, Image.BILINEAR))
            targets.append(np.concatenate([(points[:5] - x0) / side, (points[5:] - y0) / side]))
        if not crops:
            continue
        out = session.run([layer], {spec.name: spec.tensor(crops)})[0]
        xs.append(out.reshape(len(crops), -1).astype(np.float32))
        ys.extend(targets)
        done = min(first + a.batch, len(rows))
        if not a.quiet and (done % 1024 < a.batch or done == len(rows)):
            print(f"  {what}: {done}/{len(rows)} windows, {done / (time.time() - start):.1f}/s", file=sys.stderr, flush=True)
    return np.concatenate(xs), np.array(ys)


def errors(predicted, truth):
    """Per row: mean point distance over the inter-ocular distance (window units on both sides)."""
    iod = np.hypot(truth[:, 1] - truth[:, 0], truth[:, 6] - truth[:, 5])
    return np.hypot(predicted[:, :5] - truth[:, :5], predicted[:, 5:] - truth[:, 5:]).mean(1) / iod


def fit(xt, yt, xv, yv, strengths):
    """Dual ridge on centred rows: weights, bias, the chosen strength and every candidate's errors."""
    mu, ym = xt.mean(0), yt.mean(0)
    xt = xt - mu
    gram = (xt @ xt.T).astype(np.float64)
    scores, best = {}, None
    for s in strengths:
        alpha = np.linalg.solve(gram + s * np.eye(len(gram)), yt - ym)
        w = (xt.T @ alpha.astype(np.float32)).astype(np.float64)
        e = errors((xv - mu) @ w + ym, yv)
        scores[s] = {"mean_error": float(e.mean()), "failure_rate": float((e > 0.1).mean())}
        if best is None or scores[s]["mean_error"] < scores[best[0]]["mean_error"]:
            best = (s, w)
    s, w = best
    return w.astype(np.float32), (ym - mu.astype(np.float64) @ w).astype(np.float32), s, scores


def add_regression(g, layer, w, b, out, prefix="landmarks"):
    """Flatten, MatMul, Add from `layer` to the landmarks [N, 10], named `out`."""
    g.initializer.extend([numpy_helper.from_array(w, f"{prefix}/weights"), numpy_helper.from_array(b, f"{prefix}/bias")])
    g.node.extend([
        helper.make_node("Flatten", [layer], [f"{prefix}/flat"], axis=1),
        helper.make_node("MatMul", [f"{prefix}/flat", f"{prefix}/weights"], [f"{prefix}/product"]),
        helper.make_node("Add", [f"{prefix}/product", f"{prefix}/bias"], [out]),
    ])


def geometry_matrices():
    """Constant maps of the ten coordinates (x1..x5, y1..y5): to the points relative to the eyes'
    centre, to the eyes-to-mouth vector and to the left-to-right eye vector."""
    relative = np.eye(10, dtype=np.float32)
    for axis in (0, 5):
        relative[axis:axis + 2, axis:axis + 5] -= 0.5  # minus the mean of the two eyes
    to_mouth = np.zeros((10, 2), np.float32)
    eyes = np.zeros((10, 2), np.float32)
    for column, axis in enumerate((0, 5)):
        to_mouth[axis + 3:axis + 5, column] = 0.5
        to_mouth[axis:axis + 2, column] = -0.5
        eyes[axis, column], eyes[axis + 1, column] = -1.0, 1.0
    return relative, to_mouth, eyes


def add_geometry(g, landmarks):
    """`landmark_geometry` [N, 11] from the tensor `landmarks`: the five points relative to the eyes' centre
    and the inter-ocular distance, both over the eye-to-mouth distance, so that where and how
    large the face sits in the window does not matter, while the head's turn (the nose and
    mouth moving off the eyes' centre, the eyes closing up) shows."""
    relative, to_mouth, eyes = geometry_matrices()
    consts = {"geometry/relative": relative, "geometry/to_mouth": to_mouth, "geometry/eyes": eyes,
              "geometry/ones": np.ones((2, 1), np.float32), "geometry/epsilon": np.array([1e-6], np.float32)}
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())

    def length(vector, name):  # [N, 2] -> [N, 1]
        return [helper.make_node("Mul", [vector, vector], [f"{name}/squares"]),
                helper.make_node("MatMul", [f"{name}/squares", "geometry/ones"], [f"{name}/sum"]),
                helper.make_node("Sqrt", [f"{name}/sum"], [name])]

    g.node.extend([
        helper.make_node("MatMul", [landmarks, "geometry/relative"], ["geometry/points"]),
        helper.make_node("MatMul", [landmarks, "geometry/to_mouth"], ["geometry/mouth_vector"]),
        helper.make_node("MatMul", [landmarks, "geometry/eyes"], ["geometry/eye_vector"]),
        *length("geometry/mouth_vector", "geometry/mouth_length"),
        *length("geometry/eye_vector", "geometry/interocular"),
        helper.make_node("Add", ["geometry/mouth_length", "geometry/epsilon"], ["geometry/scale"]),
        helper.make_node("Concat", ["geometry/points", "geometry/interocular"], ["geometry/unscaled"], axis=1),
        helper.make_node("Div", ["geometry/unscaled", "geometry/scale"], [GEOMETRY]),
    ])


def monomial_indices(n, degree):
    """Where each monomial of `degree` lies in the flattened outer product [m, n] of the
    monomials of degree - 1 (m of them) with the n values: row r times value k for k >= the
    row's last index, so each product is kept once, in lexicographic order of index tuples."""
    rows = monomial_tuples(n, degree - 1)
    return np.array([r * n + k for r, t in enumerate(rows) for k in range(t[-1], n)], np.int64)


def monomial_tuples(n, degree):
    """Index tuples i1 <= ... <= i_degree in lexicographic order."""
    tuples = [(i,) for i in range(n)]
    for _ in range(degree - 1):
        tuples = [t + (k,) for t in tuples for k in range(t[-1], n)]
    return tuples


def add_monomials(g, values, n, degree, out):
    """`out` = `values` [N, n] followed by every product of them of degree 2..`degree`, each
    once (11 values, degree 3: 11 + 66 + 286 = 363), so that a linear head can draw curved
    borders in the geometry: with the 11 alone, validation preferred heads that all but ignored
    them next to the backbone's 1,024 features."""
    parts, previous = [values], values
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "monomials/axis1"))
    g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "monomials/axis2"))
    g.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), "monomials/flat"))
    for d in range(2, degree + 1):
        name = f"monomials/degree{d}"
        g.initializer.append(numpy_helper.from_array(monomial_indices(n, d), f"{name}/indices"))
        g.node.extend([
            helper.make_node("Unsqueeze", [previous, "monomials/axis2"], [f"{name}/column"]),
            helper.make_node("Unsqueeze", [values, "monomials/axis1"], [f"{name}/row"]),
            helper.make_node("Mul", [f"{name}/column", f"{name}/row"], [f"{name}/outer"]),
            helper.make_node("Reshape", [f"{name}/outer", "monomials/flat"], [f"{name}/all"]),
            helper.make_node("Gather", [f"{name}/all", f"{name}/indices"], [name], axis=1),
        ])
        parts.append(name)
        previous = name
    g.node.append(helper.make_node("Concat", parts, [out], axis=1))


def described(model, d, **changes):
    """`model` described by `d` with `changes` (a None value drops the key); the backbone's other
    metadata entries go too."""
    del model.metadata_props[:]
    desc.write(model, {**{k: v for k, v in d.items() if k not in changes}, **changes})
    onnx.checker.check_model(model)
    return model


def landmark_model(backbone, layer, w, b, d, crop, source):
    """The backbone up to `layer`, then the regression: output `landmarks` [N, 10]."""
    cut = onnx.load(backbone)
    g = cut.graph
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(layer, onnx.TensorProto.FLOAT, None))
    prune_unused(cut)  # what `layer` does not need (the last blocks, the backbone's heads)
    del g.value_info[:]
    add_regression(g, layer, w, b, OUTPUT)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["N", 10]))
    return described(cut, d, bottleneck=None, crop=crop, source=source)


def backbone_with_geometry(backbone, layer, w, b, d, source, degree=1):
    """The whole backbone whose bottleneck gains the geometry of the landmarks it places itself:
    `features_geometry` = Concat(bottleneck, `landmark_geometry` with its products up to
    `degree`), one backbone run for both."""
    model = onnx.load(backbone)
    g = model.graph
    # Names of its own: an exported model with the landmark model inside has it (and its
    # output `landmarks`) beside this backbone.
    add_regression(g, layer, w, b, "geometry/landmarks", prefix="geometry/regression")
    add_geometry(g, "geometry/landmarks")
    geometry = GEOMETRY
    if degree > 1:
        geometry = f"{GEOMETRY}_degree{degree}"
        add_monomials(g, GEOMETRY, GEOMETRY_VALUES, degree, geometry)
        source = f"{source}; geometry with its products up to degree {degree}"
    g.node.append(helper.make_node("Concat", [d["bottleneck"], geometry], [WITH_GEOMETRY], axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(WITH_GEOMETRY, onnx.TensorProto.FLOAT, ["N", None]))
    prune_unused(model)
    del g.value_info[:]
    return described(model, d, bottleneck=WITH_GEOMETRY, crop=None, source=f"{d.get('source', backbone.name)}; bottleneck + {source}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("backbone", type=Path)
    ap.add_argument("mtfl", type=Path)
    ap.add_argument("--layer", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scale", type=float, default=3.2)
    ap.add_argument("--jitter-scale", type=lambda t: tuple(float(v) for v in t.split(",")), default=(0.85, 1.2))
    ap.add_argument("--jitter-shift", type=float, default=0.1)
    ap.add_argument("--ridge", type=lambda t: [float(v) for v in t.split(",")], default=[1e3, 3e3, 1e4, 3e4, 1e5])
    ap.add_argument("--validation-percent", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="only the first N rows of training.txt")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: every core)")
    ap.add_argument("--geometry-degrees", type=lambda t: [int(v) for v in t.split(",")], default=[1, 3],
                    help="one geometry backbone per degree: 1 writes BACKBONE-geometry.onnx, D > 1 BACKBONE-geometryD.onnx")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if any(not 1 <= degree <= 4 for degree in a.geometry_degrees):
        raise SystemExit(f"--geometry-degrees {a.geometry_degrees}: each must be 1 to 4")
    start = time.time()
    model = onnx.load(a.backbone, load_external_data=False)
    d = desc.read(model)
    spec = Input(d, a.backbone, model)
    model.graph.output.append(helper.make_tensor_value_info(a.layer, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise SystemExit(f"{a.backbone}: cannot expose tensor '{a.layer}' as an output: {e}")
    rows = read_rows(a.mtfl)[: a.limit]
    train = [r for r in rows if not held_out(r[0], a.seed, a.validation_percent)]
    val = [r for r in rows if held_out(r[0], a.seed, a.validation_percent)]
    if len(train) < 2 or not val:
        raise SystemExit(f"{a.mtfl / 'training.txt'}: {len(train)} training and {len(val)} validation rows; need at least 2 and 1")
    xt, yt = features(session, spec, a.layer, a.mtfl, train, a, a.seed, "training")
    xv, yv = features(session, spec, a.layer, a.mtfl, val, a, a.seed + 1, "validation")
    w, b, strength, scores = fit(xt, yt, xv, yv, a.ridge)
    mean_shape = errors(np.broadcast_to(yt.mean(0), yv.shape), yv)
    crop = f"face:{a.scale:g}"
    backbone_sha = hashlib.sha256(a.backbone.read_bytes()).hexdigest()
    source = (f"landmark ridge regression (scripts/landmark_regressor.py) on {a.backbone.name} "
              f"(sha256 {backbone_sha[:12]}) tensor {a.layer}, {crop} windows jittered, seed {a.seed}")
    a.out.mkdir(parents=True, exist_ok=True)
    onnx.save(landmark_model(a.backbone, a.layer, w, b, d, crop, source), a.out / "model.onnx")
    if "bottleneck" in d:
        for degree in a.geometry_degrees:
            name = f"{a.backbone.stem}-geometry{degree if degree > 1 else ''}.onnx"
            onnx.save(backbone_with_geometry(a.backbone, a.layer, w, b, d, source, degree), a.out / name)
    chosen = scores[strength]
    result = {
        "attribute": "landmarks",
        "pipeline": "landmark ridge regression on a pretrained backbone",
        "backbone": str(a.backbone), "backbone_sha256": backbone_sha, "layer": a.layer, "features": int(xt.shape[1]),
        "crop": crop, "test_crop": "original",
        "jitter": {"scale": list(a.jitter_scale), "shift": a.jitter_shift},
        "seed": a.seed, "validation_percent": a.validation_percent,
        "train_rows": len(train), "validation_rows": len(val),
        "ridge": strength, "candidates": [{"ridge": s, **v} for s, v in scores.items()],
        "chosen_by": "lowest mean error on the validation share's jittered windows",
        "mean_shape": {"mean_error": float(mean_shape.mean()), "failure_rate": float((mean_shape > 0.1).mean())},
        "val_tasks": [{"name": "landmarks", **chosen}],
        "test_tasks": [],
        "seconds": round(time.time() - start, 1),
    }
    (a.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    for s, v in scores.items():
        mark = "  (chosen)" if s == strength else ""
        print(f"ridge {s:g}: validation mean error {100 * v['mean_error']:.2f}%, failures {100 * v['failure_rate']:.1f}%{mark}")
    print(f"the training mean shape on every validation window: mean error {100 * mean_shape.mean():.2f}%")
    print(f"wrote {a.out / 'model.onnx'} and {a.out / 'result.json'}: {len(train)} training, {len(val)} validation windows, {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
