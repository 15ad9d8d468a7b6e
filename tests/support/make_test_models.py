#!/usr/bin/env python3
"""Write the small ONNX models the Rust tests use into onnx/test/ (deterministic: fixed seeds).

  tiny_cnn.onnx          NHWC input [N,32,32,3] -> bottleneck [N,16], logits/probabilities [N,3]
  tiny_cnn_nchw.onnx     NCHW input [N,3,24,24] -> same outputs, layout NCHW in the metadata
  no_metadata.onnx       no retrain.* metadata: input 'pixels' [N,16,16,3] -> 'embedding' [N,8];
                         how to feed it is in the sidecar no_metadata.onnx.json
  not_a_model.onnx       a few bytes that are not ONNX

Rerunning gives byte-identical files.  Usage: make_test_models.py [--out-dir onnx/test]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the product scripts it builds on
import description as desc  # noqa: E402
from convert_inception import retrain_fields  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CONVERTER = "tests/support/make_test_models.py"
SOURCE = "synthetic (seeded random weights)"
OPSET = 17


class TinyCnn:
    """A Conv/Relu/MaxPool stack + GlobalAveragePool + Flatten (+ Gemm, Softmax) with random
    weights.  Feature maps are NCHW; an NHWC input is transposed first, as in inception_v3.onnx."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.initializers = [], []

    def weight(self, name, shape, fan_in):
        # He-scaled so that activations neither vanish nor explode through the stack.
        value = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def add(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv_relu_pool(self, x, name, in_channels, out_channels, pool):
        w = self.weight(f"{name}/kernel", (out_channels, in_channels, 3, 3), 9 * in_channels)
        b = self.weight(f"{name}/bias", (out_channels,), 9 * in_channels)
        x = self.add("Conv", [x, w, b], name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = self.add("Relu", [x], f"{name}/relu")
        if pool:
            x = self.add("MaxPool", [x], f"{name}/pool", kernel_shape=[2, 2], strides=[2, 2])
        return x

    def model(self, *, input_name, layout, size, widths, pool, bottleneck, classes):
        """The model, its input shape and the output shapes (without the batch axis)."""
        shape = [size, size, 3] if layout == "NHWC" else [3, size, size]
        x = input_name
        if layout == "NHWC":
            x = self.add("Transpose", [x], "to_nchw", perm=[0, 3, 1, 2])
        channels = 3
        for i, width in enumerate(widths, 1):
            x = self.conv_relu_pool(x, f"conv{i}", channels, width, pool)
            channels = width
        x = self.add("GlobalAveragePool", [x], "gap")
        self.add("Flatten", [x], bottleneck, axis=1)
        outputs = [(bottleneck, [channels])]
        if classes:
            w = self.weight("dense/kernel", (channels, classes), channels)
            b = self.weight("dense/bias", (classes,), channels)
            self.add("Gemm", [bottleneck, w, b], "logits")
            self.add("Softmax", ["logits"], "probabilities", axis=-1)
            outputs += [("logits", [classes]), ("probabilities", [classes])]
        graph = helper.make_graph(
            self.nodes, "tiny_cnn",
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *shape])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *s]) for n, s in outputs],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name=f"retrain {CONVERTER}")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model, shape, outputs


# name: (seed, model settings, retrain fields beyond the shared ones, write as metadata?)
MODELS = {
    "tiny_cnn": (1, dict(input_name="input", layout="NHWC", size=32, widths=(8, 16), pool=True,
                         bottleneck="bottleneck", classes=3),
                 dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=["a", "b", "c"]),
                 True),
    "tiny_cnn_nchw": (2, dict(input_name="input", layout="NCHW", size=24, widths=(8, 16),
                              pool=True, bottleneck="bottleneck", classes=3),
                      dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=["a", "b", "c"]),
                      True),
    "no_metadata": (3, dict(input_name="pixels", layout="NHWC", size=16, widths=(8,), pool=False,
                            bottleneck="embedding", classes=0),
                    dict(mean=(0, 0, 0), std=(1, 1, 1), labels=None),
                    False),
}


def write_special_models(out_dir):
    """Models that exist to go wrong in a known way (issue 6's bad inputs)."""
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 8, 8, 3])
    # nan_on_dark: sqrt(mean pixel value - 0.5) per image, so a dark picture gives NaN.
    half = helper.make_tensor("half", onnx.TensorProto.FLOAT, [], [0.5])
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Sub", ["mean", "half"], ["centred"]),
        helper.make_node("Sqrt", ["centred"], ["bottleneck"]),
    ]
    y = helper.make_tensor_value_info("bottleneck", onnx.TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(nodes, "nan_on_dark", [x], [y], [half])
    fields = retrain_fields(input_name="input", layout="NHWC", height=8, width=8, bottleneck="bottleneck",
                            source=SOURCE, converter=CONVERTER, mean=(0, 0, 0), std=(1, 1, 1), labels=None)
    save_special(out_dir / "nan_on_dark.onnx", graph, fields)
    # flat_input: an input of rank 2, which no image batch fits.
    x = helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 12])
    y = helper.make_tensor_value_info("bottleneck", onnx.TensorProto.FLOAT, ["N", 12])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["bottleneck"])], "flat_input", [x], [y])
    save_special(out_dir / "flat_input.onnx", graph, fields)


def save_special(path, graph, fields):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name=CONVERTER)
    model.ir_version = 8
    desc.write(model, fields)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


NOT_A_MODEL = b"this is not an ONNX model\n\x00\x01\x02\x03\xfe\xff"


def write_model(out_dir, name, seed, settings, extra, as_metadata):
    model, shape, outputs = TinyCnn(seed).model(**settings)
    fields = retrain_fields(input_name=settings["input_name"], layout=settings["layout"],
                            height=settings["size"], width=settings["size"],
                            bottleneck=settings["bottleneck"], source=SOURCE,
                            converter=CONVERTER, **extra)
    path = out_dir / f"{name}.onnx"
    if as_metadata:
        desc.write(model, fields)
    else:
        desc.check(fields)
        sidecar = desc.sidecar_path(path)
        sidecar.write_text(json.dumps(fields, indent=2) + "\n")
        print(f"wrote {sidecar}")
    onnx.save(model, path)
    print(f"wrote {path} ({path.stat().st_size} bytes): input {settings['input_name']} "
          f"{['N', *shape]}, outputs " + ", ".join(f"{n} {['N', *s]}" for n, s in outputs))
    return path, shape, outputs


def smoke_test(path, shape, outputs):
    """Run the written file once in ONNX Runtime and check the output shapes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    results = session.run(None, {session.get_inputs()[0].name: x})
    for (name, expected), result in zip(outputs, results):
        if list(result.shape) != [2, *expected] or not np.all(np.isfinite(result)):
            raise SystemExit(f"{path}: output {name} has shape {result.shape}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "onnx" / "test")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, (seed, settings, extra, as_metadata) in MODELS.items():
        smoke_test(*write_model(args.out_dir, name, seed, settings, extra, as_metadata))
    write_special_models(args.out_dir)
    garbage = args.out_dir / "not_a_model.onnx"
    garbage.write_bytes(NOT_A_MODEL)
    print(f"wrote {garbage} ({len(NOT_A_MODEL)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
