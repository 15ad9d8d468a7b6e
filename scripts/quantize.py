#!/usr/bin/env python3
"""int8 quantisation of a retrain backbone with ONNX Runtime's own tool (run by `retrain quantize`).

    quantize.py MODEL.onnx --out OUT.onnx --description DESC.json
        [--calibration TENSOR.f32 --shape N,D1,D2,D3 --input NAME]

With --calibration: static QDQ quantisation, weights int8 per output channel, activations uint8
with ranges from the calibration tensor (the model's own preprocessing of N images, written by
retrain as little-endian float32); ONNX Runtime's int8 kernels are fastest for this pairing on
x86 (VNNI). Without it: dynamic quantisation (weights only; activation ranges taken per batch).
The model is first pre-processed (shape inference and graph optimisation) as the tool
recommends. For static quantisation, an AveragePool that feeds one 1x1 Conv is moved after it
first: ONNX Runtime's int8 AveragePool runs about 7x slower than its float one (InceptionV3:
32% of the int8 run), and after the Conv it pools 4-11x fewer channels. Both are linear and
the pool does not count padding, so the result is the same; it is checked on the first
calibration batch. Every key of DESC.json is written back as `retrain.KEY` metadata, with
`retrain.quantized` saying how, so `extract`, `export` and `predict` take OUT as they take MODEL.

retrain runs this file from a temporary folder (src/quantize.rs carries it with include_str!),
so it cannot import scripts/description.py: `describe` mirrors that module's `write` (other
tools' entries kept, earlier `retrain.*` entries replaced), with the keys sorted as
src/description.rs writes them.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

BATCH = 8


class TensorReader(CalibrationDataReader):
    """The calibration tensor in batches of BATCH images."""

    def __init__(self, path, shape, input_name):
        data = np.fromfile(path, dtype="<f4")
        if data.size != int(np.prod(shape)):
            sys.exit(f"{path}: {data.size} floats, but shape {shape} needs {int(np.prod(shape))}")
        self.feeds = [{input_name: data.reshape(shape)[i:i + BATCH]} for i in range(0, shape[0], BATCH)]
        self.batches = iter(self.feeds)

    def get_next(self):
        return next(self.batches, None)


def attributes(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def is_pointwise_conv(node, initializers):
    """A Conv that maps each pixel on its own: 1x1 kernel, stride 1, no padding, one group."""
    if node.op_type != "Conv" or node.input[1] not in initializers:
        return False
    a = attributes(node)
    return (list(initializers[node.input[1]].dims[2:]) == [1, 1] and all(s == 1 for s in a.get("strides", [1]))
            and all(p == 0 for p in a.get("pads", [0])) and a.get("group", 1) == 1
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def pool_after_pointwise(model):
    """Moves every AveragePool (padding not counted) whose only consumer is a pointwise Conv
    after that Conv: Conv(pool(x)) = pool(Conv(x)), the bias included, since each output of
    such a pool is a weighted mean of its inputs. Returns how many were moved."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    moved = 0
    for pool in list(graph.node):
        if pool.op_type != "AveragePool" or attributes(pool).get("count_include_pad", 0) != 0:
            continue
        users = consumers.get(pool.output[0], [])
        if len(users) != 1 or pool.output[0] in outputs or not is_pointwise_conv(users[0], initializers):
            continue
        conv = users[0]
        result = conv.output[0]
        conv.input[0], conv.output[0] = pool.input[0], result + "/before_pool"
        pool.input[0], pool.output[0] = conv.output[0], result
        graph.node.remove(pool)
        graph.node.insert(list(graph.node).index(conv) + 1, pool)  # stays in topological order
        moved += 1
    return moved


def check_same_outputs(original, rewritten, feed):
    """Refuses a rewrite that changed any output by more than float rounding."""
    sessions = [ort.InferenceSession(path, providers=["CPUExecutionProvider"]) for path in (original, rewritten)]
    names = [o.name for o in sessions[0].get_outputs()]
    for name, a, b in zip(names, *(session.run(names, feed) for session in sessions)):
        change = float(np.abs(a - b).max())
        if change > 1e-4 * max(float(np.abs(a).max()), 1e-6):
            sys.exit(f"internal error: moving AveragePool after its Conv changed output {name} by {change}")


def describe(model, description):
    """Writes `description` (keys without the prefix) as the model's `retrain.KEY` metadata,
    sorted, after the entries of other tools; as scripts/description.py's `write`."""
    kept = [(e.key, e.value) for e in model.metadata_props if not e.key.startswith("retrain.")]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    for key, value in sorted(description.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = f"retrain.{key}", str(value)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--description", required=True, help="JSON object of the model's description")
    p.add_argument("--calibration", help="float32 tensor of preprocessed calibration images")
    p.add_argument("--shape", help="its shape, N,D1,D2,D3")
    p.add_argument("--input", help="the model input it feeds")
    p.add_argument("--note", default="", help="appended to retrain.quantized (e.g. the calibration images)")
    a = p.parse_args()
    with open(a.description) as f:
        description = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        source, moved = a.model, 0
        if a.calibration:
            shape = [int(d) for d in a.shape.split(",")]
            reader = TensorReader(a.calibration, shape, a.input)
            model = onnx.load(a.model)
            moved = pool_after_pointwise(model)
            if moved:
                source = os.path.join(tmp, "pool_moved.onnx")
                onnx.save(model, source)
                check_same_outputs(a.model, source, reader.feeds[0])
        prepared = os.path.join(tmp, "prepared.onnx")
        # skip_symbolic_shape: sympy is not among our dependencies; ONNX shape inference suffices for CNNs
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        if a.calibration:
            quantize_static(prepared, a.out, reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            how = f"static int8 (QDQ; weights int8 per channel; activations uint8, MinMax ranges from {shape[0]} images{a.note}"
            how += f"; {moved} AveragePool moved after the 1x1 Conv it feeds)"
        else:
            quantize_dynamic(prepared, a.out, per_channel=True, weight_type=QuantType.QInt8)
            how = "dynamic int8 (weights int8 per channel; activation ranges per batch)"
    model = onnx.load(a.out)
    describe(model, {**description, "quantized": how})
    onnx.save(model, a.out)
    print(how)


if __name__ == "__main__":
    main()
