#!/usr/bin/env python3
"""Run Python ONNX Runtime (CPU, 1 thread) on a .npy input and save one named output.

Usage: ort_reference.py MODEL.onnx INPUT.npy OUTPUT_NAME OUT.npy

The Rust tests call this to compare the Rust `ort` results with Python onnxruntime.  The model
must have exactly one input; INPUT.npy must be float32 with that input's shape.
"""

import argparse
import sys

import numpy as np
import onnxruntime as ort


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("input", help="float32 .npy fed to the model's only input")
    parser.add_argument("output_name")
    parser.add_argument("out", help="where to np.save the output")
    args = parser.parse_args(argv)

    x = np.load(args.input)
    if x.dtype != np.float32:
        parser.error(f"{args.input}: dtype {x.dtype}, expected float32")
    options = ort.SessionOptions()
    # One thread, sequential: the same reduction order on every run.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    if len(inputs) != 1:
        parser.error(f"{args.model} has {len(inputs)} inputs, expected 1")
    outputs = [o.name for o in session.get_outputs()]
    if args.output_name not in outputs:
        parser.error(f"{args.model} has no output {args.output_name!r} (outputs: {outputs})")
    (result,) = session.run([args.output_name], {inputs[0].name: x})
    np.save(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
