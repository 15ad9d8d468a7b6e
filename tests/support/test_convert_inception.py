#!/usr/bin/env python3
"""Test convert_inception.py's Keras .h5 path (source B) without a real Keras weight file.

No ImageNet .h5 can be had offline, so this writes synthetic ones in the Keras HDF5 weight layout
from the nsfwjs weights (which are a Keras InceptionV3 with the same layer names) and checks:
  1. a Keras 2 `save_weights` file with a 'predictions' head: converts, passes the converter's
     NumPy check (logits included), and gives the same bottleneck, bit for bit, as the nsfwjs
     conversion on the same input;
  2. a tf.keras-style `model.save` file without the head (layer names counted from 0, shuffled
     layer order, weights under 'model_weights'): same bottleneck again.

Usage: test_convert_inception.py [--nsfwjs TGZ_OR_DIR]   (default: npm pack, as the converter)
"""

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))  # the product scripts it builds on
import convert_inception as ci  # noqa: E402
import description as desc  # noqa: E402

WEIGHT_ORDER = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")


def keras_string_list(names):
    """How Keras stores a list of names as an attribute (an empty list becomes a float array)."""
    return np.asarray([name.encode("utf8") for name in names])


def write_keras_h5(path, layers, weights, rename=lambda name: name, model_save=False):
    """Write `weights` for `layers` as Keras' HDF5 weight file: root attr layer_names, one group
    per layer with attr weight_names, datasets at <layer>/<layer>/<weight>:0."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if model_save else f
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.1.6"
        root.attrs["layer_names"] = keras_string_list(rename(layer.name) for layer in layers)
        for layer in layers:
            name = rename(layer.name)
            group = root.create_group(name)
            values = weights.get(layer.name, {})
            weight_names = [f"{name}/{w}:0" for w in WEIGHT_ORDER if w in values]
            group.attrs["weight_names"] = keras_string_list(weight_names)
            for weight_name, w in zip(weight_names, (w for w in WEIGHT_ORDER if w in values)):
                group.create_dataset(weight_name, data=values[w])


def tf_keras_name(name):
    """Keras 2.0 'conv2d_1' -> tf.keras 'conv2d' (tf.keras counts unnamed layers from 0)."""
    prefix, number = ci.split_keras_name(name)
    if prefix in ("conv2d", "batch_normalization") and number:
        return prefix if number == 1 else f"{prefix}_{number - 1}"
    return name


def bottleneck(path, x):
    return ci.ort_session(str(path)).run([ci.BOTTLENECK], {ci.INPUT_NAME: x})[0]


def metadata(path):
    return desc.read(onnx.load(str(path), load_external_data=False))


def convert(args):
    if ci.main(args) != 0:
        raise SystemExit(f"conversion failed: {args}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nsfwjs", metavar="TGZ_OR_DIR")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nsfwjs = ci.load_nsfwjs(args.nsfwjs, tmp)
        base = ci.keras_inception_v3()  # through mixed10 + avg_pool, Keras layer order
        weights = {name: w for name, w in nsfwjs.weights.items()
                   if name in {layer.name for layer in base.layers}}
        rng = np.random.default_rng(0)
        top = ci.keras_inception_v3(classes=1000)
        weights_top = dict(weights, predictions={
            "kernel": rng.normal(0, 0.02, (2048, 1000)).astype(np.float32),
            "bias": rng.normal(0, 0.1, 1000).astype(np.float32)})

        top_h5 = tmp / "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"
        write_keras_h5(top_h5, top.layers, weights_top)
        notop_h5 = tmp / "inception_v3_tf_keras_notop.h5"
        shuffled = [base.layers[i] for i in rng.permutation(len(base.layers))]
        write_keras_h5(notop_h5, shuffled, weights, rename=tf_keras_name, model_save=True)

        nsfwjs_onnx, top_onnx, notop_onnx = (tmp / f"{n}.onnx" for n in ("nsfwjs", "top", "notop"))
        onnx.save(ci.build_model(nsfwjs, 17)[0], nsfwjs_onnx)
        convert(["--keras-h5", str(top_h5), "--out", str(top_onnx), "--check-images", "2"])
        convert(["--keras-h5", str(notop_h5), "--out", str(notop_onnx), "--check-images", "1"])

        x = rng.uniform(-1, 1, (3, 299, 299, 3)).astype(np.float32)
        want = bottleneck(nsfwjs_onnx, x)
        failures = []
        for path in (top_onnx, notop_onnx):
            same = np.array_equal(bottleneck(path, x), want)
            print(f"{path.name}: bottleneck identical to the nsfwjs conversion: {same}")
            if not same:
                failures.append(f"{path.name} bottleneck differs")
        top_meta, notop_meta = metadata(top_onnx), metadata(notop_onnx)
        expected = {"mean": "0.5,0.5,0.5", "std": "0.5,0.5,0.5", "source": f"keras h5 {top_h5.name}"}
        if any(top_meta.get(k) != v for k, v in expected.items()) or "labels" in top_meta:
            failures.append(f"unexpected metadata {top_meta}")
        outputs = [o.name for o in onnx.load(str(notop_onnx)).graph.output]
        if outputs != [ci.BOTTLENECK] or notop_meta["source"] != f"keras h5 {notop_h5.name}":
            failures.append(f"notop model: outputs {outputs}, metadata {notop_meta}")
    print("FAILED: " + "; ".join(failures) if failures else "all source-B checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
