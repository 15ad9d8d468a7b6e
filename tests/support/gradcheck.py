#!/usr/bin/env python3
"""Gradient check of the training artifacts: every differentiated op type of the two networks.

For each case a tiny forward graph (the op under test between a parameterised input stage and a
Gemm class layer) is built in float64, its artifact gradient graph is made by
make_artifacts.gradient_model (onnx-ad reverse mode plus fast_rules.py, the path train_step.onnx
uses), and the gradient is compared with central finite differences of the loss graph, both run
by onnx's float64 reference evaluator (ONNX Runtime has no float64 Conv), with MaxPool
replaced by the MaxPool class below (the reference one gets Indices wrong under padding).  Error per case:
max |g_artifact - g_fd| / max(max |g_fd|, 1e-3) over every parameter coordinate.

Then the real networks in float32 on ONNX Runtime: gradient.onnx of TCDCN and Cascade-CNN
(batch 2) against the float64 reference-evaluator gradient of the same graph, on every
coordinate.  float32 has a 6e-8 unit roundoff; through ~10 layers and sums over up to 10^5
terms the expected relative error is ~1e-5, so the tolerance is 1e-3 of the largest gradient.

  gradcheck.py [--json] [--skip-networks]
Exit status 1 if any case is over its tolerance.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the product scripts it builds on
import description as desc  # noqa: E402
import make_artifacts as ma  # noqa: E402
import scratch_nets  # noqa: E402

FD_STEP = 1e-6
TOLERANCE_F64 = 1e-6
TOLERANCE_F32 = 1e-3
BATCH = 2


class Tiny:
    """A float64 NCHW graph builder for one case."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def param(self, name, shape, scale=0.5):
        self.inits.append(numpy_helper.from_array(self.rng.normal(0, scale, shape), name))
        return name

    def op(self, op, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, name, c_in, c_out, k, pad=0, stride=1):
        return self.op("Conv", [x, self.param(f"{name}/w", (c_out, c_in, k, k)), self.param(f"{name}/b", (c_out,))],
                       name, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2)

    def model(self, x, features, classes=3, size=7, channels=2):
        flat = self.op("Flatten", [x], "flat", axis=1)
        self.op("Gemm", [flat, self.param("fc/w", (features, classes)), self.param("fc/b", (classes,))], "logits")
        return self.model_of("logits", classes, size, channels)

    def model_of(self, logits, classes, size=7, channels=2):
        graph = helper.make_graph(self.nodes, "case",
                                  [helper.make_tensor_value_info("input", TensorProto.DOUBLE, ["N", size, size, channels])],
                                  [helper.make_tensor_value_info(logits, TensorProto.DOUBLE, ["N", classes])],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ma.OPSET)])
        model.ir_version = 8
        return model


def nchw(t):
    return t.op("Transpose", ["input"], "nchw", perm=[0, 3, 1, 2])


def case_conv_valid():
    t = Tiny(1)
    return t.model(t.conv(nchw(t), "conv", 2, 3, 3), 3 * 5 * 5)


def case_conv_padded():
    t = Tiny(2)
    return t.model(t.conv(nchw(t), "conv", 2, 3, 5, pad=2), 3 * 7 * 7)


def case_conv_1x1_stack():
    """A 1x1 conv feeding a 2x2 conv: checks the input adjoint (ConvTranspose) of the second."""
    t = Tiny(3)
    x = t.conv(t.conv(nchw(t), "c1", 2, 4, 1), "c2", 4, 3, 2)
    return t.model(x, 3 * 6 * 6)


def case_conv_offsets():
    """A 3x3 conv over 32 channels: its weight adjoint is the per-offset GEMM form
    (fast_rules.OFFSET_MIN_CHANNELS), the 1x1 conv below it the pointwise form."""
    t = Tiny(10)
    x = t.conv(t.conv(nchw(t), "c1", 2, 32, 1), "c2", 32, 3, 3, pad=1)
    return t.model(x, 3 * 7 * 7)


def case_conv_flipped():
    """A 3x3 conv on a 35x35 map: its input adjoint is a Conv with the flipped kernel
    (fast_rules._flipped_conv_fits), checked through the 1x1 conv's parameters below it."""
    t = Tiny(11)
    x = t.conv(t.conv(nchw(t), "c1", 2, 2, 1), "c2", 2, 2, 3, pad=1)
    return t.model(t.op("MaxPool", [x], "pool", kernel_shape=[5, 5], strides=[5, 5]), 2 * 7 * 7, size=35)


def case_conv_strided():
    t = Tiny(4)
    return t.model(t.conv(nchw(t), "conv", 2, 3, 3, stride=2), 3 * 3 * 3)


def case_relu():
    t = Tiny(5)
    return t.model(t.op("Relu", [t.conv(nchw(t), "conv", 2, 3, 3)], "relu"), 3 * 5 * 5)


def case_maxpool_2x2():
    """2x2/2 pooling of a 7x7 map: the last row and column fall outside every window."""
    t = Tiny(6)
    x = t.op("MaxPool", [t.conv(nchw(t), "conv", 2, 3, 1)], "pool", kernel_shape=[2, 2], strides=[2, 2])
    return t.model(x, 3 * 3 * 3)


def case_maxpool_3x3_same():
    """The inception pool branch: 3x3, stride 1, pad 1 (onnx-ad's own rule, MaxPool Indices +
    ScatterND).  Evaluated by ONNX Runtime in float64: onnx's reference MaxPool returns wrong
    Indices when there is padding (it indexes the padded tensor), ORT's are right.  No Conv
    here, since ORT has no float64 Conv: the parameter enters through a Mul."""
    t = Tiny(7)
    x = t.op("Mul", [nchw(t), t.param("scale", (1, 2, 7, 7))], "scaled")
    x = t.op("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
    return t.model(x, 2 * 7 * 7)


def case_maxpool_3x3_stride2():
    """InceptionV3's grid reduction: 3x3 windows at stride 2 overlap by a row and a column
    (a 7x7 map: both phases of the stride, and the last row and column in one window only)."""
    t = Tiny(12)
    x = t.op("MaxPool", [t.conv(nchw(t), "conv", 2, 3, 1)], "pool", kernel_shape=[3, 3], strides=[2, 2])
    return t.model(x, 3 * 3 * 3)


def case_maxpool_ties():
    """Padded, overlapping windows after a Relu: a window whose maximum is a Relu zero holds it
    several times; whichever of them the adjoint goes to, the Relu's adjoint stops it, as
    finite differences see it (the pre-activations are negative, never exactly zero)."""
    t = Tiny(13)
    x = t.op("Relu", [t.conv(nchw(t), "conv", 2, 3, 1)], "relu")
    x = t.op("MaxPool", [x], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return t.model(x, 3 * 4 * 4)


def case_averagepool_3x3_same():
    """The inception pool branch of InceptionV3: 3x3, stride 1, pad 1, padding not counted."""
    t = Tiny(14)
    x = t.op("AveragePool", [t.conv(nchw(t), "conv", 2, 3, 1)], "pool", kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
    return t.model(x, 3 * 7 * 7)


def case_averagepool_uneven():
    """A 3x2 window padded 1/0 rows-first and 1/1 columns: the adjoint's mirrored padding and
    the per-window counts differ by side, which a square, evenly padded case cannot show."""
    t = Tiny(15)
    x = t.op("AveragePool", [t.conv(nchw(t), "conv", 2, 3, 1)], "pool", kernel_shape=[3, 2], strides=[1, 1], pads=[1, 0, 0, 1])
    return t.model(x, 3 * 6 * 7)


def case_concat():
    t = Tiny(8)
    x = nchw(t)
    a, b = t.conv(x, "a", 2, 2, 1), t.conv(x, "b", 2, 3, 3, pad=1)
    return t.model(t.op("Concat", [a, b], "concat", axis=1), 5 * 7 * 7)


def case_gemm_relu_dropout():
    """Flatten -> Gemm -> Relu -> Dropout (a mask input in training) -> Gemm."""
    t = Tiny(9)
    flat = t.op("Flatten", [t.conv(nchw(t), "conv", 2, 2, 1)], "flat0", axis=1)
    hidden = t.op("Relu", [t.op("Gemm", [flat, t.param("h/w", (98, 6)), t.param("h/b", (6,))], "h")], "h/relu")
    t.inits.append(numpy_helper.from_array(np.array(0.4), "ratio"))
    x = t.op("Dropout", [hidden, "ratio"], "drop")
    return t.model(x, 6)


def case_multitask():
    """Three task layers on one feature (two class tasks and five 2-d landmarks): each task's
    loss, its weight, unknown labels (-1) left out."""
    t = Tiny(10)
    flat = t.op("Flatten", [t.conv(nchw(t), "conv", 2, 2, 1)], "flat", axis=1)
    tasks = [("a", "classes", 2, 1.0), ("b", "classes", 3, 0.5), ("points", "landmarks", 10, 2.0)]
    heads = [t.op("Gemm", [flat, t.param(f"{n}/w", (98, w)), t.param(f"{n}/b", (w,))], f"task/{n}") for n, _, w, _ in tasks]
    t.op("Concat", heads, "logits", axis=1)
    model = t.model_of("logits", 15)
    desc.write(model, {"tasks": json.dumps(
        [{"name": n, "kind": k, "tensor": f"task/{n}", "width": w, "weight": wt} for n, k, w, wt in tasks])}, replace=False)
    return model


CASES = {
    "Conv (valid)": (case_conv_valid, ["Conv"]),
    "Conv (padded 5x5)": (case_conv_padded, ["Conv", "Pad"]),
    "Conv input adjoint (ConvTranspose)": (case_conv_1x1_stack, ["Conv"]),
    "Conv (stride 2)": (case_conv_strided, ["Conv"]),
    "Conv weight adjoint per offset (32 channels)": (case_conv_offsets, ["Conv"]),
    "Conv input adjoint as flipped Conv (35x35)": (case_conv_flipped, ["Conv"]),
    "Relu": (case_relu, ["Relu"]),
    "MaxPool 2x2/2": (case_maxpool_2x2, ["MaxPool"]),
    "MaxPool 3x3/1 pad 1 (on ORT)": (case_maxpool_3x3_same, ["MaxPool"]),
    "MaxPool 3x3/1 pad 1": (case_maxpool_3x3_same, ["MaxPool"]),
    "MaxPool 3x3/2 (overlapping windows)": (case_maxpool_3x3_stride2, ["MaxPool"]),
    "MaxPool 3x3/2 pad 1 after Relu (ties)": (case_maxpool_ties, ["MaxPool"]),
    "AveragePool 3x3/1 pad 1": (case_averagepool_3x3_same, ["AveragePool"]),
    "AveragePool 3x2/1, uneven padding": (case_averagepool_uneven, ["AveragePool"]),
    "Concat": (case_concat, ["Concat"]),
    "Gemm, Flatten, Dropout mask (Mul)": (case_gemm_relu_dropout, ["Gemm", "Flatten", "Dropout"]),
    "Multi-task loss (classes, landmarks, unknown labels)": (case_multitask, ["Gemm", "Sub", "Add"]),
}
# Cases with many parameters check a random sample of coordinates per tensor.
SAMPLED = {"Conv weight adjoint per offset (32 channels)": 40, "Conv input adjoint as flipped Conv (35x35)": 40}
# The fast_rules.py form each case is there for, by the name stem of a node it emits: a case
# whose graph lacks it no longer checks that rule, and fails.
EXERCISES = {"Conv (valid)": "patches", "Conv input adjoint (ConvTranspose)": "dy_flat",
             "Conv (stride 2)": "im2col_slice", "Conv weight adjoint per offset (32 channels)": "dw_offset",
             "Conv input adjoint as flipped Conv (35x35)": "a_conv_flipped", "Relu": "relu_mask",
             "MaxPool 2x2/2": "is_max",
             "AveragePool 3x3/1 pad 1": "avgpool_spread", "AveragePool 3x2/1, uneven padding": "avgpool_spread"}
# The loss (LogSoftmax, OneHot, Mul, ReduceSum, Div, Neg) is part of every case.
LOSS_OPS = ["LogSoftmax", "Mul", "ReduceSum", "Div", "Neg", "Max"]


NETWORK_NAMES = ("tcdcn", "cascade_cnn", scratch_nets.MULTITASK_NAME)


def feeds_for(model_inputs, masks, rng, batch, dtype):
    feeds = {}
    for name, shape in model_inputs.items():
        if name == ma.LABELS and len(shape) == 2:
            # every class task's column, one unknown (-1) in the first
            feeds[name] = rng.integers(0, 2, shape).astype(np.int64)
            feeds[name][0, 0] = -1
        elif name == ma.LABELS:
            feeds[name] = rng.integers(0, 3, batch).astype(np.int64) % 2
        elif name == ma.TARGETS:
            feeds[name] = rng.uniform(0, 1, shape).astype(dtype)
        elif name == ma.WEIGHTS:
            feeds[name] = np.array([1.0, 0.5][:batch] + [1.0] * (batch - 2), dtype)
    for mask in masks:
        keep = rng.random(mask["shape"]) >= mask["ratio"]
        feeds[mask["input"]] = (keep / (1 - mask["ratio"])).astype(dtype)
    return feeds


def input_shapes(model):
    return {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


class MaxPool(OpRun):  # new_ops matches implementations by class name
    """A 2-D MaxPool whose Indices index the unpadded input, as the ONNX spec and ORT say
    (onnx's own reference indexes the padded tensor when there is padding)."""

    op_domain = ""

    def _run(self, x, kernel_shape=None, strides=None, pads=None, auto_pad=None, ceil_mode=None,
             dilations=None, storage_order=None):
        kh, kw = kernel_shape
        sh, sw = strides or (1, 1)
        top, left, bottom, right = pads or (0, 0, 0, 0)
        n, c, h, w = x.shape
        padded = np.full((n, c, h + top + bottom, w + left + right), -np.inf, x.dtype)
        padded[:, :, top:top + h, left:left + w] = x
        oh, ow = (padded.shape[2] - kh) // sh + 1, (padded.shape[3] - kw) // sw + 1
        y = np.empty((n, c, oh, ow), x.dtype)
        idx = np.empty((n, c, oh, ow), np.int64)
        for i in range(oh):
            for j in range(ow):
                window = padded[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(n, c, -1)
                best = window.argmax(axis=2)
                y[:, :, i, j] = np.take_along_axis(window, best[..., None], 2)[..., 0]
                row, col = i * sh + best // kw - top, j * sw + best % kw - left
                idx[:, :, i, j] = ((np.arange(n)[:, None] * c + np.arange(c)) * h + row) * w + col
        return (y, idx)


def reference_evaluator(model):
    return ReferenceEvaluator(model, new_ops=[MaxPool])


class OrtEvaluator:
    """ReferenceEvaluator's interface over an ONNX Runtime CPU session."""

    def __init__(self, model):
        import onnxruntime as ort

        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(self, outputs, feeds):
        names = {i.name for i in self.session.get_inputs()}
        return self.session.run(outputs, {k: v for k, v in feeds.items() if k in names})


def check_case(forward, batch=BATCH, coords=None, seed=0, evaluator=reference_evaluator, exercises=None):
    """Max relative error of the artifact gradient against central differences (float64);
    infinite if the gradient graph has no node named after `exercises`."""
    trainable = ma.select_trainable(forward, None)
    grad_model, masks, _ = ma.gradient_model(forward, trainable, batch)
    if exercises and not any(exercises in o for n in grad_model.graph.node for o in n.output):
        print(f"the gradient graph has no '{exercises}' node: the rule this case checks is not used")
        return float("inf")
    loss_model, _, _ = ma.loss_model(forward, trainable, batch)
    rng = np.random.default_rng(seed)
    shapes = input_shapes(loss_model)
    image = forward.graph.input[0].name
    feeds = feeds_for(shapes, masks, rng, batch, np.float64)
    feeds[image] = rng.normal(0, 1, shapes[image])
    params = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in forward.graph.initializer if t.name in trainable}
    got = dict(zip([o.name for o in grad_model.graph.output],
                   evaluator(grad_model).run(None, {**feeds, **params})))
    loss = evaluator(loss_model)
    worst = 0.0
    for name, value in params.items():
        fd = np.zeros_like(value)
        flat = value.reshape(-1)
        picks = range(flat.size) if coords is None else rng.choice(flat.size, min(coords, flat.size), replace=False)
        for k in picks:
            bumped = []
            for sign in (1, -1):
                trial = flat.copy()
                trial[k] += sign * FD_STEP
                bumped.append(loss.run([ma.LOSS], {**feeds, **params, name: trial.reshape(value.shape)})[0])
            fd.reshape(-1)[k] = (bumped[0] - bumped[1]) / (2 * FD_STEP)
        mask = np.zeros(flat.size, bool)
        mask[list(picks)] = True
        g = got[ma.GRAD_PREFIX + name].reshape(-1)[mask]
        ref = fd.reshape(-1)[mask]
        worst = max(worst, float(np.max(np.abs(g - ref)) / max(np.max(np.abs(ref)), 1e-3)))
    return worst


def multitask_loss_matches_numpy(seed=0):
    """The multi-task loss graph against the formula written in numpy (relative error)."""
    forward = case_multitask()
    trainable = ma.select_trainable(forward, None)
    model, masks, _ = ma.loss_model(forward, trainable, BATCH)
    rng = np.random.default_rng(seed)
    shapes = input_shapes(model)
    feeds = feeds_for(shapes, masks, rng, BATCH, np.float64)
    feeds["input"] = rng.normal(0, 1, shapes["input"])
    params = {t.name: numpy_helper.to_array(t) for t in forward.graph.initializer if t.name in trainable}
    got = reference_evaluator(model).run([ma.LOSS], {**feeds, **params})[0]
    names = ["task/a", "task/b", "task/points"]
    heads = dict(zip(names, ReferenceEvaluator(forward).run(names, {"input": feeds["input"]})))
    w, labels, want = feeds[ma.WEIGHTS], feeds[ma.LABELS], 0.0
    for k, (name, weight) in enumerate([("a", 1.0), ("b", 0.5)]):
        z = heads[f"task/{name}"]
        logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        known = labels[:, k] >= 0
        ce = -np.array([logp[i, labels[i, k]] if known[i] else 0.0 for i in range(BATCH)])
        want += weight * (w * ce).sum() / (w * known).sum()
    err = ((heads["task/points"] - feeds[ma.TARGETS]) ** 2).sum(1)
    want += 2.0 * 0.5 * (w * err).sum() / w.sum()
    return abs(float(got) - want) / abs(want)


def to_float64(model):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return model


def check_network(name, seed=0):
    """gradient.onnx (float32, ONNX Runtime) vs the same graph in float64 (reference evaluator)."""
    import onnxruntime as ort

    forward32 = scratch_nets.build(name)
    trainable = ma.select_trainable(forward32, None)
    g32, masks, _ = ma.gradient_model(forward32, trainable, BATCH)
    g64, _, _ = ma.gradient_model(to_float64(forward32), trainable, BATCH)
    rng = np.random.default_rng(seed)
    shapes = input_shapes(g32)
    feeds = feeds_for(shapes, masks, rng, BATCH, np.float32)
    feeds["input"] = rng.uniform(-1, 1, shapes["input"]).astype(np.float32)
    params = {t.name: numpy_helper.to_array(t) for t in forward32.graph.initializer if t.name in trainable}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.onnx"
        onnx.save(g32, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        out32 = dict(zip([o.name for o in session.get_outputs()], session.run(None, {**feeds, **params})))
    feeds64 = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in {**feeds, **params}.items()}
    out64 = dict(zip([o.name for o in g64.graph.output], reference_evaluator(g64).run(None, feeds64)))
    scale = max(float(np.max(np.abs(out64[ma.GRAD_PREFIX + p]))) for p in trainable)
    return max(float(np.max(np.abs(out32[ma.GRAD_PREFIX + p] - out64[ma.GRAD_PREFIX + p]))) for p in trainable) / scale


def differentiated_ops(name):
    """Op types on a path from a trainable parameter to the loss in a network's loss graph."""
    forward = scratch_nets.build(name)
    trainable = set(ma.select_trainable(forward, None))
    model, _, _ = ma.loss_model(forward, sorted(trainable), BATCH)
    reached = set(trainable)
    for node in model.graph.node:
        if reached & set(node.input):
            reached.update(node.output)
    needed, ops = {ma.LOSS}, set()
    for node in reversed(list(model.graph.node)):
        if needed & set(node.output) and reached & set(node.input):
            needed.update(node.input)
            ops.add(node.op_type)
    return ops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-networks", action="store_true")
    args = parser.parse_args(argv)
    results, failed = [], False
    covered = set(LOSS_OPS)
    for label, (make, ops) in CASES.items():
        err = check_case(make(), coords=SAMPLED.get(label), exercises=EXERCISES.get(label),
                         evaluator=OrtEvaluator if "on ORT" in label else reference_evaluator)
        covered.update(ops)
        results.append({"case": label, "dtype": "float64", "max_rel_error": err, "tolerance": TOLERANCE_F64})
    used = set().union(*(differentiated_ops(n) for n in NETWORK_NAMES))
    # Dropout became a Mul in the loss graph; Flatten is covered by every case.
    missing = sorted(used - covered - {"Mul"})
    if missing:
        failed = True
        print(f"op types used by the networks but not checked: {missing}")
    results.append({"case": "Multi-task loss value vs numpy", "dtype": "float64",
                    "max_rel_error": multitask_loss_matches_numpy(), "tolerance": TOLERANCE_F64})
    if not args.skip_networks:
        for name in NETWORK_NAMES:
            results.append({"case": f"{name} gradient.onnx on ORT vs float64", "dtype": "float32",
                            "max_rel_error": check_network(name), "tolerance": TOLERANCE_F32})
    for r in results:
        ok = r["max_rel_error"] <= r["tolerance"]
        failed |= not ok
        if not args.json:
            print(f"{'ok ' if ok else 'BAD'} {r['case']:42s} {r['dtype']}  max rel error {r['max_rel_error']:.2e}"
                  f"  (tolerance {r['tolerance']:.0e})")
    if args.json:
        print(json.dumps({"results": results, "ops_used": sorted(used), "ok": not failed}))
    else:
        print(f"differentiated op types in the two networks: {', '.join(sorted(used))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
