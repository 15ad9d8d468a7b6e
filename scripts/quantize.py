#!/usr/bin/env python3
"""int8 quantisation of a retrain backbone with ONNX Runtime's own tool (run by `retrain quantize`).

    quantize.py MODEL.onnx --out OUT.onnx --description DESC.json
        [--calibration TENSOR.f32 --shape N,D1,D2,D3 --input NAME]

With --calibration: static QDQ quantisation, weights int8 per output channel, activations uint8
with ranges from the calibration tensor (the model's own preprocessing of N images, written by
retrain as little-endian float32); ONNX Runtime's int8 kernels are fastest for this pairing on
x86 (VNNI). Without it: dynamic quantisation (weights only; activation ranges taken per batch).
The model is first pre-processed (shape inference and graph optimisation) as the tool
recommends. Every key of DESC.json is written back as `retrain.KEY` metadata, with
`retrain.quantized` saying how, so `extract`, `export` and `predict` take OUT as they take MODEL.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

BATCH = 8


class TensorReader(CalibrationDataReader):
    """The calibration tensor in batches of BATCH images."""

    def __init__(self, path, shape, input_name):
        data = np.fromfile(path, dtype="<f4")
        if data.size != int(np.prod(shape)):
            sys.exit(f"{path}: {data.size} floats, but shape {shape} needs {int(np.prod(shape))}")
        self.batches = iter([{input_name: data.reshape(shape)[i:i + BATCH]} for i in range(0, shape[0], BATCH)])

    def get_next(self):
        return next(self.batches, None)


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
        prepared = os.path.join(tmp, "prepared.onnx")
        # skip_symbolic_shape: sympy is not among our dependencies; ONNX shape inference suffices for CNNs
        quant_pre_process(a.model, prepared, skip_symbolic_shape=True)
        if a.calibration:
            shape = [int(d) for d in a.shape.split(",")]
            quantize_static(prepared, a.out, TensorReader(a.calibration, shape, a.input), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            how = f"static int8 (QDQ; weights int8 per channel; activations uint8, MinMax ranges from {shape[0]} images{a.note})"
        else:
            quantize_dynamic(prepared, a.out, per_channel=True, weight_type=QuantType.QInt8)
            how = "dynamic int8 (weights int8 per channel; activation ranges per batch)"
    model = onnx.load(a.out)
    kept = [(e.key, e.value) for e in model.metadata_props if not e.key.startswith("retrain.")]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    for key, value in sorted({**description, "quantized": how}.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = f"retrain.{key}", str(value)
    onnx.save(model, a.out)
    print(how)


if __name__ == "__main__":
    main()
