#!/usr/bin/env python3
"""Build the study's two from-scratch CNNs as ONNX graphs with seeded initialisation.

  onnx/cascade_cnn.onnx  input [N,150,150,3] NHWC: conv 5x5x20, 3x3x40, 3x3x60, 2x2x80 (valid,
                         ReLU, each followed by 2x2 max-pooling), one inception block (1x1 / 3x3 /
                         5x5 / pool branches, concatenated), fc 160 ReLU (`bottleneck`), class layer
  onnx/tcdcn.onnx        input [N,60,60,3] NHWC: conv 5x5x20, pool, 5x5x48, pool, 3x3x64, pool,
                         3x3x80, fc 256 ReLU (`bottleneck`, the shared feature vector),
                         dropout 0.4 (--dropout; identity here; scripts/make_artifacts.py makes it a mask
                         input in the training graph), class layer
  onnx/tcdcn_multitask.onnx  the same trunk with a layer per task on the 256-d feature: the five
                         landmarks (`landmarks`, 0..1 of the crop) and gender, smile, glasses,
                         pose (`probabilities:ATTRIBUTE`); `logits` concatenates them, and the
                         metadata `retrain.tasks` lists each task's kind, width and loss weight

Outputs of both: `bottleneck`, `logits`, `probabilities`.  Convolution kernels and fully
connected layers are He-normal (ReLU follows them), the class layer Glorot-uniform, biases 0;
one numpy Generator seeded with --seed draws them in graph order, so a rerun gives the same file.

  scratch_nets.py [--out-dir onnx] [--seed 0] [--classes 2] [--dropout 0.4]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import description as desc  # noqa: E402
from convert_inception import retrain_fields  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
CONVERTER = "scripts/scratch_nets.py"
OPSET = 17  # MaxPool's reverse rule in onnx-ad needs ScatterND with reduction='add' (opset 16+)
INPUT = "input"
# Pixels scaled to [-1, 1]: value = (pixel/255 - 0.5) / 0.5.
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
DROPOUT = 0.4  # TCDCN's, after the shared feature; Cascade-CNN has none


class NetBuilder:
    """Appends NCHW layers to an ONNX graph and draws their weights from one seeded generator."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.initializers = [], []

    def add(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def param(self, name, value):
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def he_normal(self, name, shape, fan_in):
        return self.param(name, self.rng.normal(0.0, np.sqrt(2.0 / fan_in), shape))

    def glorot_uniform(self, name, shape, fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return self.param(name, self.rng.uniform(-limit, limit, shape))

    def zeros(self, name, shape):
        return self.param(name, np.zeros(shape))

    def conv(self, x, name, c_in, c_out, k, pad=0, relu=True):
        w = self.he_normal(f"{name}/kernel", (c_out, c_in, k, k), c_in * k * k)
        b = self.zeros(f"{name}/bias", (c_out,))
        y = self.add("Conv", [x, w, b], name, kernel_shape=[k, k], pads=[pad] * 4)
        return self.add("Relu", [y], f"{name}/relu") if relu else y

    def max_pool(self, x, name, k=2, stride=2, pad=0):
        return self.add("MaxPool", [x], name, kernel_shape=[k, k], strides=[stride, stride],
                        pads=[pad] * 4)

    def dense(self, x, name, n_in, n_out, relu):
        if relu:
            w = self.he_normal(f"{name}/kernel", (n_in, n_out), n_in)
        else:
            w = self.glorot_uniform(f"{name}/kernel", (n_in, n_out), n_in, n_out)
        b = self.zeros(f"{name}/bias", (n_out,))
        y = self.add("Gemm", [x, w, b], name if not relu else f"{name}/linear")
        return self.add("Relu", [y], name) if relu else y

    def inception(self, x, name, c_in, widths):
        """GoogLeNet's block: 1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 max-pool->1x1, 'same' padding."""
        b1, (r3, b3), (r5, b5), bp = widths
        branches = [
            self.conv(x, f"{name}/1x1", c_in, b1, 1),
            self.conv(self.conv(x, f"{name}/3x3_reduce", c_in, r3, 1), f"{name}/3x3", r3, b3, 3, pad=1),
            self.conv(self.conv(x, f"{name}/5x5_reduce", c_in, r5, 1), f"{name}/5x5", r5, b5, 5, pad=2),
            self.conv(self.max_pool(x, f"{name}/pool", k=3, stride=1, pad=1), f"{name}/pool_proj", c_in, bp, 1),
        ]
        return self.add("Concat", branches, f"{name}/concat", axis=1), b1 + b3 + b5 + bp


def cascade_cnn(seed, classes, dropout=None):
    """The Cascade-CNN of the study (150x150x3 input; no dropout, whatever `dropout` says);
    returns builder, size, bottleneck width."""
    net = NetBuilder(seed)
    x = net.add("Transpose", [INPUT], "to_nchw", perm=[0, 3, 1, 2])
    size, channels = 150, 3
    for i, (k, width) in enumerate([(5, 20), (3, 40), (3, 60), (2, 80)], 1):
        x = net.max_pool(net.conv(x, f"conv{i}", channels, width, k), f"pool{i}")
        size, channels = (size - k + 1) // 2, width
    x, channels = net.inception(x, "inception", channels, (32, (24, 32), (8, 16), 16))
    flat = net.add("Flatten", [x], "flatten", axis=1)
    hidden = 160
    net.dense(flat, "bottleneck", channels * size * size, hidden, relu=True)
    net.dense("bottleneck", "logits", hidden, classes, relu=False)
    return net, 150, hidden


def tcdcn(seed, classes, dropout=DROPOUT):
    """TCDCN (60x60x3 input) with a 256-d shared feature vector and dropout after it."""
    net = NetBuilder(seed)
    x = net.add("Transpose", [INPUT], "to_nchw", perm=[0, 3, 1, 2])
    size, channels = 60, 3
    layers = [(5, 20, True), (5, 48, True), (3, 64, True), (3, 80, False)]
    for i, (k, width, pool) in enumerate(layers, 1):
        x = net.conv(x, f"conv{i}", channels, width, k)
        size, channels = size - k + 1, width
        if pool:
            x = net.max_pool(x, f"pool{i}")
            size //= 2
    flat = net.add("Flatten", [x], "flatten", axis=1)
    hidden = 256
    net.dense(flat, "bottleneck", channels * size * size, hidden, relu=True)
    dropped = net.add("Dropout", ["bottleneck", "dropout/ratio"], "dropout")
    net.initializers.append(numpy_helper.from_array(np.array(dropout, np.float32), "dropout/ratio"))
    net.dense(dropped, "logits", hidden, classes, relu=False)
    return net, 60, hidden


NETWORKS = {"cascade_cnn": cascade_cnn, "tcdcn": tcdcn}

# Zhang et al.'s multi-task TCDCN: the five landmarks (x1..x5, y1..y5, each divided by the
# crop's width or height, so 0..1 across the model input) regressed beside MTFL's four
# attributes, all on the shared 256-d feature.  (name, kind, width, loss weight): the landmark
# loss is 0.5 x the squared error summed over the ten coordinates, about 0.01 for a face
# whose landmarks are off by 5% of the crop, so it weighs 100 to count as much as an
# attribute's cross-entropy.
MULTITASK = [("landmarks", "landmarks", 10, 100.0), ("gender", "classes", 2, 1.0),
             ("smile", "classes", 2, 1.0), ("glasses", "classes", 2, 1.0), ("pose", "classes", 5, 1.0)]
MULTITASK_NAME = "tcdcn_multitask"


def tcdcn_multitask(seed, dropout=DROPOUT):
    """TCDCN's trunk and 256-d feature with one linear layer per task; `logits` is their
    concatenation (landmarks first), the tensor every retrain graph reads."""
    net, size, hidden = tcdcn(seed, 2, dropout)
    # drop the single class layer: each task gets its own
    net.nodes = [n for n in net.nodes if not n.output[0].startswith("logits")]
    net.initializers = [t for t in net.initializers if not t.name.startswith("logits/")]
    heads = []
    for name, kind, width, _ in MULTITASK:
        head = net.dense("dropout", f"task/{name}", hidden, width, relu=False)
        if kind == "landmarks":
            # start at the middle of the crop, where the mean face's landmarks are
            net.initializers[-1] = numpy_helper.from_array(np.full(width, 0.5, np.float32), f"task/{name}/bias")
        heads.append(head)
    net.add("Concat", heads, "logits", axis=1)
    outputs = [("bottleneck", hidden), ("logits", sum(t[2] for t in MULTITASK))]
    for (name, kind, width, _), head in zip(MULTITASK, heads):
        if kind == "classes":
            outputs.append((f"probabilities:{name}", width))
            net.add("Softmax", [head], f"probabilities:{name}", axis=-1)
        else:
            outputs.append((name, width))
            net.add("Identity", [head], name)
    tasks = [{"name": n, "kind": k, "tensor": f"task/{n}", "width": w, "weight": wt} for n, k, w, wt in MULTITASK]
    return to_model(net, MULTITASK_NAME, size, outputs, seed, tasks=json.dumps(tasks))


def finish(net, name, size, hidden, classes, seed):
    net.add("Softmax", ["logits"], "probabilities", axis=-1)
    outputs = [("bottleneck", hidden), ("logits", classes), ("probabilities", classes)]
    return to_model(net, name, size, outputs, seed)


def to_model(net, name, size, outputs, seed, **extra_fields):
    """The checked model of `net`'s graph: NHWC `input`, the named [N, width] outputs, and
    retrain's description (plus `extra_fields`) in the metadata."""
    graph = helper.make_graph(
        net.nodes, name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", size, size, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w]) for n, w in outputs],
        net.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=f"retrain {CONVERTER}")
    model.ir_version = 8
    fields = retrain_fields(input_name=INPUT, layout="NHWC", height=size, width=size, mean=MEAN,
                            std=STD, bottleneck="bottleneck", labels=None,
                            source=f"{name}, untrained (seed {seed})", converter=CONVERTER)
    fields.update(extra_fields)
    desc.write(model, fields)
    onnx.checker.check_model(model, full_check=True)
    return model


def build(name, seed=0, classes=2, dropout=DROPOUT):
    if name == MULTITASK_NAME:
        return tcdcn_multitask(seed, dropout)
    net, size, hidden = NETWORKS[name](seed, classes, dropout)
    return finish(net, name, size, hidden, classes, seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "onnx")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=DROPOUT,
                        help="TCDCN's dropout ratio after the shared feature (0: none)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in [*NETWORKS, MULTITASK_NAME]:
        model = build(name, args.seed, args.classes, args.dropout)
        path = args.out_dir / f"{name}.onnx"
        onnx.save(model, path)
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        print(f"wrote {path} ({path.stat().st_size} bytes, {params} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
