#!/usr/bin/env python3
"""Convert Keras-format InceptionV3 weights into the ONNX model that retrain uses.

Sources (no TensorFlow, no torch):
  A (default) npm nsfwjs@4.4.0: Keras layers topology + uint8-quantised tfjs weight shards.
  B  a Keras ImageNet `inception_v3_weights_tf_dim_ordering_tf_kernels[_notop].h5`, read with h5py.

Both sources are turned into the same list of Keras layers (A: the package's own topology JSON,
B: a re-creation of keras.applications.InceptionV3 that is verified against A's JSON on every
A run) and go through one ONNX builder.  The ONNX model takes NHWC float32 `input` [N,299,299,3]
(already scaled as the `retrain.mean`/`retrain.std` metadata says), folds each BatchNormalization
into its convolution, and has the outputs `bottleneck` [N,2048] and, when the source has a
classifier, `logits` [N,K] (pre-softmax) and `probabilities` [N,K].

After writing, the model is checked against an independent NumPy forward pass that uses the
unfolded Keras weights (see run_check).
"""

import argparse
import base64
import hashlib
import json
import math
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import description as desc  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "onnx" / "inception_v3.onnx"
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "datasets" / "MTFL" / "AFLW"
NSFWJS_SPEC = "nsfwjs@4.4.0"
NSFWJS_MODEL_DIR = Path("dist/models/inception_v3")
NSFWJS_CLASSES_JS = Path("dist/cjs/nsfw_classes.js")
INPUT_NAME = "input"
BOTTLENECK = "bottleneck"
LOGITS = "logits"
PROBABILITIES = "probabilities"

# float32 ONNX Runtime against a float64 NumPy reference.  A float32 dot product of length K has a
# relative rounding error of about sqrt(K) * 6e-8; the longest here are K = 3*3*448 = 4032
# (~4e-6), and about 20 layers compound that to ~1e-5 at mixed10.  1e-4 leaves a 10x margin, while
# any real conversion mistake (kernel transposed, padding off by one, BN folded wrongly, pooling
# counting the padding) gives errors of 1e-2 or more.
REL_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------------
# Keras topology as a plain list of layers
# --------------------------------------------------------------------------------------------

@dataclass
class Layer:
    name: str
    kind: str  # Keras class_name
    config: dict
    inputs: list = field(default_factory=list)  # names of the layers feeding this one


@dataclass
class Topology:
    layers: list  # topologically ordered
    output: str  # name of the model's output layer

    def by_name(self):
        return {layer.name: layer for layer in self.layers}


@dataclass
class Source:
    topology: Topology
    weights: dict  # layer name -> {"kernel"|"bias"|"gamma"|"beta"|"moving_mean"|...: float32 array}
    labels: list  # class names of the original head, or None when unknown
    mean: tuple  # model input = (pixel / 255 - mean[c]) / std[c]
    std: tuple
    description: str


# Config keys the builder and the reference read; only these are compared between topologies.
RELEVANT_CONFIG = {
    "InputLayer": ("batch_input_shape",),
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "use_bias",
               "activation"),
    "BatchNormalization": ("axis", "epsilon", "center", "scale"),
    "Activation": ("activation",),
    "MaxPooling2D": ("pool_size", "strides", "padding"),
    "AveragePooling2D": ("pool_size", "strides", "padding"),
    "Concatenate": ("axis",),
    "GlobalAveragePooling2D": (),
    "Flatten": (),
    "Dropout": (),
    "Dense": ("units", "activation", "use_bias"),
}


def layers_from_keras_json(model_config):
    """Topology from a Keras `model_config` (functional Model, each layer called once)."""
    config = model_config["config"]
    layers = []
    for entry in config["layers"]:
        if entry["class_name"] not in RELEVANT_CONFIG:
            raise ValueError(f"layer {entry['name']}: unsupported Keras layer {entry['class_name']}")
        nodes = entry["inbound_nodes"]
        if len(nodes) > 1:
            raise ValueError(f"layer {entry['name']} is shared; not supported")
        inputs = []
        for inbound_layer, node_index, tensor_index, *_ in (nodes[0] if nodes else []):
            if node_index != 0 or tensor_index != 0:
                raise ValueError(f"layer {entry['name']}: multi-output inbound node")
            inputs.append(inbound_layer)
        layers.append(Layer(entry["name"], entry["class_name"], entry["config"], inputs))
    (output,) = config["output_layers"]
    return Topology(layers, output[0])


def keras_inception_v3(classes=None):
    """keras.applications.InceptionV3 (Keras 2) as a Topology, with Keras' automatic layer names.

    Mirrors keras_applications/inception_v3.py statement by statement.  With classes=None the head
    is Keras' `include_top=False, pooling='avg'` (GlobalAveragePooling2D 'avg_pool'); otherwise
    'avg_pool' + Dense 'predictions' with softmax, as in the ImageNet weight file.
    """
    layers = []
    counters = {}

    def add(kind, prefix, inputs, name=None, **config):
        if name is None:  # Keras 2 names unnamed layers <prefix>_<per-prefix counter from 1>
            counters[prefix] = counters.get(prefix, 0) + 1
            name = f"{prefix}_{counters[prefix]}"
        layers.append(Layer(name, kind, config, list(inputs)))
        return name

    def conv2d_bn(x, filters, rows, cols, padding="same", strides=(1, 1)):
        x = add("Conv2D", "conv2d", [x], filters=filters, kernel_size=[rows, cols],
                strides=list(strides), padding=padding, dilation_rate=[1, 1], use_bias=False,
                activation="linear")
        x = add("BatchNormalization", "batch_normalization", [x], axis=3, epsilon=0.001,
                center=True, scale=False)
        return add("Activation", "activation", [x], activation="relu")

    def max_pool(x):
        return add("MaxPooling2D", "max_pooling2d", [x], pool_size=[3, 3], strides=[2, 2],
                   padding="valid")

    def avg_pool_same(x):
        return add("AveragePooling2D", "average_pooling2d", [x], pool_size=[3, 3],
                   strides=[1, 1], padding="same")

    def concat(branches, name=None):
        return add("Concatenate", "concatenate", branches, name=name, axis=3)

    x = add("InputLayer", "input", [], name="input_1", batch_input_shape=[None, 299, 299, 3])
    x = conv2d_bn(x, 32, 3, 3, strides=(2, 2), padding="valid")
    x = conv2d_bn(x, 32, 3, 3, padding="valid")
    x = conv2d_bn(x, 64, 3, 3)
    x = max_pool(x)
    x = conv2d_bn(x, 80, 1, 1, padding="valid")
    x = conv2d_bn(x, 192, 3, 3, padding="valid")
    x = max_pool(x)

    # mixed0..2: 35 x 35
    for i, pool_filters in enumerate((32, 64, 64)):
        branch1x1 = conv2d_bn(x, 64, 1, 1)
        branch5x5 = conv2d_bn(x, 48, 1, 1)
        branch5x5 = conv2d_bn(branch5x5, 64, 5, 5)
        branch3x3dbl = conv2d_bn(x, 64, 1, 1)
        branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3)
        branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3)
        branch_pool = conv2d_bn(avg_pool_same(x), pool_filters, 1, 1)
        x = concat([branch1x1, branch5x5, branch3x3dbl, branch_pool], name=f"mixed{i}")

    # mixed3: 17 x 17
    branch3x3 = conv2d_bn(x, 384, 3, 3, strides=(2, 2), padding="valid")
    branch3x3dbl = conv2d_bn(x, 64, 1, 1)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3, strides=(2, 2), padding="valid")
    branch_pool = max_pool(x)
    x = concat([branch3x3, branch3x3dbl, branch_pool], name="mixed3")

    # mixed4..7: 17 x 17
    for i, width in zip(range(4, 8), (128, 160, 160, 192)):
        branch1x1 = conv2d_bn(x, 192, 1, 1)
        branch7x7 = conv2d_bn(x, width, 1, 1)
        branch7x7 = conv2d_bn(branch7x7, width, 1, 7)
        branch7x7 = conv2d_bn(branch7x7, 192, 7, 1)
        branch7x7dbl = conv2d_bn(x, width, 1, 1)
        branch7x7dbl = conv2d_bn(branch7x7dbl, width, 7, 1)
        branch7x7dbl = conv2d_bn(branch7x7dbl, width, 1, 7)
        branch7x7dbl = conv2d_bn(branch7x7dbl, width, 7, 1)
        branch7x7dbl = conv2d_bn(branch7x7dbl, 192, 1, 7)
        branch_pool = conv2d_bn(avg_pool_same(x), 192, 1, 1)
        x = concat([branch1x1, branch7x7, branch7x7dbl, branch_pool], name=f"mixed{i}")

    # mixed8: 8 x 8
    branch3x3 = conv2d_bn(x, 192, 1, 1)
    branch3x3 = conv2d_bn(branch3x3, 320, 3, 3, strides=(2, 2), padding="valid")
    branch7x7x3 = conv2d_bn(x, 192, 1, 1)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 1, 7)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 7, 1)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 3, 3, strides=(2, 2), padding="valid")
    branch_pool = max_pool(x)
    x = concat([branch3x3, branch7x7x3, branch_pool], name="mixed8")

    # mixed9, mixed10: 8 x 8 x 2048
    for i in range(2):
        branch1x1 = conv2d_bn(x, 320, 1, 1)
        branch3x3 = conv2d_bn(x, 384, 1, 1)
        branch3x3_1 = conv2d_bn(branch3x3, 384, 1, 3)
        branch3x3_2 = conv2d_bn(branch3x3, 384, 3, 1)
        branch3x3 = concat([branch3x3_1, branch3x3_2], name=f"mixed9_{i}")
        branch3x3dbl = conv2d_bn(x, 448, 1, 1)
        branch3x3dbl = conv2d_bn(branch3x3dbl, 384, 3, 3)
        branch3x3dbl_1 = conv2d_bn(branch3x3dbl, 384, 1, 3)
        branch3x3dbl_2 = conv2d_bn(branch3x3dbl, 384, 3, 1)
        branch3x3dbl = concat([branch3x3dbl_1, branch3x3dbl_2])
        branch_pool = conv2d_bn(avg_pool_same(x), 192, 1, 1)
        x = concat([branch1x1, branch3x3, branch3x3dbl, branch_pool], name=f"mixed{9 + i}")

    x = add("GlobalAveragePooling2D", "avg_pool", [x], name="avg_pool")
    if classes is not None:
        x = add("Dense", "dense", [x], name="predictions", units=classes, activation="softmax",
                use_bias=True)
    return Topology(layers, x)


def ancestors(topology, name):
    """Names of `name` and every layer it depends on."""
    by_name = topology.by_name()
    seen, stack = set(), [name]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(by_name[current].inputs)
    return seen


def verify_inception_base(topology):
    """Check that `topology` contains keras.applications.InceptionV3 through mixed10, exactly.

    Run on every nsfwjs conversion: it proves that keras_inception_v3(), which source B relies
    on, matches a real Keras-saved InceptionV3 layer for layer (names, wiring, settings).
    """
    reference = keras_inception_v3().by_name()
    reference.pop("avg_pool")
    found = topology.by_name()
    base = ancestors(topology, "mixed10") if "mixed10" in found else set()
    if base != set(reference):
        raise ValueError("topology is not Keras InceptionV3: layers differ: "
                         f"{sorted(base ^ set(reference))[:10]}")
    for name, want in reference.items():
        got = found[name]
        keys = RELEVANT_CONFIG[want.kind]
        if (got.kind, got.inputs, [got.config.get(k) for k in keys]) != \
                (want.kind, want.inputs, [want.config.get(k) for k in keys]):
            raise ValueError(f"topology differs from Keras InceptionV3 at layer {name}")


# --------------------------------------------------------------------------------------------
# Source A: npm nsfwjs
# --------------------------------------------------------------------------------------------

# Loads the UMD bundles the way the package itself would (CommonJS require) and dumps them as JSON.
NODE_DUMP = r"""
const fs = require('fs'), path = require('path');
const [modelDir, classesJs, out] = process.argv.slice(1);
const model = require(path.join(modelDir, 'model.min.js'));
const shards = model.weightsManifest.map(group =>
    group.paths.map(p => require(path.join(modelDir, p + '.min.js'))));
const classes = require(classesJs).NSFW_CLASSES;
fs.writeFileSync(out, JSON.stringify({model, shards, classes}));
"""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def npm_pack(tmp):
    """Fetch the pinned package tarball with npm's own client (registry from the user's config)."""
    result = subprocess.run(["npm", "pack", NSFWJS_SPEC, "--json"], cwd=tmp, check=True,
                            capture_output=True, text=True)
    (info,) = json.loads(result.stdout)
    print(f"npm pack {NSFWJS_SPEC}: {info['filename']} integrity {info['integrity']}")
    return Path(tmp) / info["filename"]


def nsfwjs_package_dir(path, tmp):
    """The unpacked package directory (the one holding dist/) for a tarball, a dir, or None."""
    if path is None:
        path = npm_pack(tmp)
    path = Path(path)
    if path.is_file():
        print(f"nsfwjs tarball {path} sha256 {sha256_of(path)}")
        with tarfile.open(path) as tar:
            tar.extractall(tmp, filter="data")  # refuses links/paths escaping tmp
        path = Path(tmp)
    for candidate in (path, path / "package"):
        if (candidate / NSFWJS_MODEL_DIR / "model.min.js").is_file():
            return candidate
    raise FileNotFoundError(f"no {NSFWJS_MODEL_DIR}/model.min.js in {path}")


def dequantize(buffer, offset, spec):
    """One tfjs weight from the concatenated shard bytes; returns (float32 array, bytes used)."""
    count = math.prod(spec["shape"])
    if spec["dtype"] != "float32":
        raise ValueError(f"{spec['name']}: unsupported dtype {spec['dtype']}")
    quantization = spec.get("quantization")
    if quantization is None:
        values = np.frombuffer(buffer, np.float32, count, offset)
        return values.reshape(spec["shape"]).copy(), 4 * count
    stored = {"uint8": np.uint8, "uint16": np.uint16}[quantization["dtype"]]
    raw = np.frombuffer(buffer, stored, count, offset)
    # tfjs: value = q * scale + min, evaluated in double and stored as float32.
    values = raw * quantization["scale"] + quantization["min"]
    return values.astype(np.float32).reshape(spec["shape"]), raw.nbytes


def decode_tfjs_weights(manifest, shards):
    """{"layer/weight": array} from a tfjs weightsManifest and its base64 shard strings."""
    weights = {}
    for group, group_shards in zip(manifest, shards):
        buffer = b"".join(base64.b64decode(shard) for shard in group_shards)
        offset = 0
        for spec in group["weights"]:
            weights[spec["name"]], used = dequantize(buffer, offset, spec)
            offset += used
        if offset != len(buffer):
            raise ValueError(f"manifest covers {offset} bytes of {len(buffer)}")
    return weights


def group_by_layer(flat):
    """{"layer/kernel": a} -> {"layer": {"kernel": a}} (the name's last part, ':0' dropped)."""
    layers = {}
    for name, value in flat.items():
        layer, weight = name.rsplit("/", 1)
        layers.setdefault(layer, {})[weight.split(":")[0]] = value
    return layers


def load_nsfwjs(path, tmp):
    package = nsfwjs_package_dir(path, tmp)
    dump = Path(tmp) / "nsfwjs_dump.json"
    subprocess.run(["node", "-e", NODE_DUMP, str(package / NSFWJS_MODEL_DIR),
                    str(package / NSFWJS_CLASSES_JS), str(dump)], check=True)
    data = json.loads(dump.read_text())
    topology = layers_from_keras_json(data["model"]["modelTopology"]["model_config"])
    verify_inception_base(topology)
    weights = group_by_layer(decode_tfjs_weights(data["model"]["weightsManifest"],
                                                 data["shards"]))
    classes = data["classes"]  # {"0": "Drawing", ...}: index -> name
    labels = [classes[str(i)] for i in range(len(classes))]
    version = json.loads((package / "package.json").read_text())["version"]
    return Source(topology, weights, labels, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                  description=f"npm nsfwjs@{version}")


# --------------------------------------------------------------------------------------------
# Source B: Keras .h5 weight file
# --------------------------------------------------------------------------------------------

def h5_string_list(group, attr):
    """A Keras string-list attribute; Keras splits long ones into attr0, attr1, ... chunks."""
    if attr in group.attrs:
        values = list(group.attrs[attr])
    else:
        values, chunk = [], 0
        while f"{attr}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{attr}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def read_keras_h5(path):
    """{layer name: {weight: array}} for the layers that have weights, in file order."""
    import h5py  # only this source needs it

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f  # model.save() vs save_weights()
        if "layer_names" not in root.attrs:
            raise ValueError(f"{path}: not a Keras 2 HDF5 weight file (no layer_names)")
        layers = {}
        for layer_name in h5_string_list(root, "layer_names"):
            group = root[layer_name]
            names = h5_string_list(group, "weight_names")
            if names:
                layers[layer_name] = {n.split("/")[-1].split(":")[0]:
                                      np.asarray(group[n], dtype=np.float32) for n in names}
    return layers


def split_keras_name(name):
    """'conv2d_12' -> ('conv2d', 12); 'conv2d' -> ('conv2d', 0) (tf.keras counts from 0)."""
    prefix, number = re.fullmatch(r"(.*?)(?:_(\d+))?", name).groups()
    return prefix, int(number or 0)


def match_layer_names(wanted, available):
    """{wanted name: name in the file}.

    Exact names when the file has them all (Keras 2 files, like the ImageNet ones).  Otherwise
    automatic names are matched by rank within their prefix: Keras numbers unnamed layers in
    creation order, but where the counter starts depends on the Keras version and session
    (tf.keras saves 'conv2d', 'conv2d_1', ...), so the i-th conv2d is the i-th conv2d either way.
    """
    if set(wanted) <= set(available):
        return {name: name for name in wanted}

    def by_prefix(names):
        groups = {}
        for name in sorted(names, key=split_keras_name):
            groups.setdefault(split_keras_name(name)[0], []).append(name)
        return groups

    have = by_prefix(available)
    mapping = {}
    for prefix, names in by_prefix(wanted).items():
        if len(have.get(prefix, [])) != len(names):
            raise ValueError(f"weight file has {len(have.get(prefix, []))} '{prefix}' layers, "
                             f"InceptionV3 needs {len(names)}")
        mapping.update(zip(names, have[prefix]))
    print("note: layer names differ from Keras 2's; matched automatic names by rank")
    return mapping


def load_keras_h5(path):
    stored = read_keras_h5(path)
    # A 2-D kernel is the ImageNet classifier ('predictions'): the file is include_top=True.
    dense = [w["kernel"] for w in stored.values() if "kernel" in w and w["kernel"].ndim == 2]
    topology = keras_inception_v3(classes=dense[-1].shape[1] if dense else None)
    wanted = [layer.name for layer in topology.layers
              if layer.kind in ("Conv2D", "BatchNormalization", "Dense")]
    if len(stored) != len(wanted):
        raise ValueError(f"{path}: {len(stored)} layers with weights, InceptionV3 has {len(wanted)}")
    mapping = match_layer_names(wanted, list(stored))
    weights = {name: stored[mapping[name]] for name in wanted}
    # Keras ImageNet InceptionV3 preprocessing: x / 127.5 - 1 == (x / 255 - 0.5) / 0.5.
    return Source(topology, weights, labels=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                  description=f"keras h5 {Path(path).name}")


# --------------------------------------------------------------------------------------------
# Shared Keras semantics
# --------------------------------------------------------------------------------------------

def keras_padding(size, kernel, stride, padding):
    """(output size, pad before, pad after) along one axis, as TensorFlow computes them."""
    if padding == "valid":
        return (size - kernel) // stride + 1, 0, 0
    if padding != "same":
        raise ValueError(f"unsupported padding {padding}")
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2  # TF puts the odd pixel after


def fold_batch_norm(conv_layer, conv_weights, bn_layer, bn_weights):
    """Keras conv (+ following inference-mode BN) as one (kernel [kh,kw,cin,cout], bias).

    y = (conv(x) + b - mean) / sqrt(var + eps) * gamma + beta, so per output channel the kernel
    scales by gamma / sqrt(var + eps); computed in float64 and rounded once.
    """
    kernel = conv_weights["kernel"].astype(np.float64)
    bias = conv_weights.get("bias", np.zeros(kernel.shape[-1])).astype(np.float64)
    if bn_layer is None:
        return kernel, bias
    if conv_layer.config.get("activation", "linear") != "linear":
        raise ValueError(f"{conv_layer.name}: activation before BatchNormalization")
    scale = bn_weights.get("gamma", 1.0) / np.sqrt(
        bn_weights["moving_variance"].astype(np.float64) + bn_layer.config["epsilon"])
    shift = bn_weights.get("beta", 0.0) - bn_weights["moving_mean"] * scale
    return kernel * scale, bias * scale + shift


def folded_convolutions(topology):
    """{conv name: BN name} for each Conv2D whose only consumer is a BatchNormalization."""
    consumers = {}
    for layer in topology.layers:
        for source in layer.inputs:
            consumers.setdefault(source, []).append(layer)
    by_name = topology.by_name()
    folded = {}
    for layer in topology.layers:
        if layer.kind == "BatchNormalization":
            (source,) = layer.inputs
            if by_name[source].kind != "Conv2D" or len(consumers[source]) != 1:
                raise ValueError(f"{layer.name}: BatchNormalization not right after a Conv2D")
            if layer.config.get("axis") not in (3, -1):
                raise ValueError(f"{layer.name}: BatchNormalization not on the channel axis")
            folded[source] = layer.name
    return folded


def bottleneck_layer(topology):
    """The first layer giving a [N, C] feature vector: retrain.py's pool_3 bottleneck."""
    for layer in topology.layers:
        if layer.kind in ("Flatten", "GlobalAveragePooling2D"):
            return layer.name
    raise ValueError("topology has no Flatten/GlobalAveragePooling2D")


# --------------------------------------------------------------------------------------------
# ONNX graph
# --------------------------------------------------------------------------------------------

class OnnxBuilder:
    """Emits ONNX nodes for Keras layers.  Feature maps are NCHW inside the graph.

    `tensor[layer]` is the ONNX tensor holding a Keras layer's output, `shape[tensor]` its static
    shape without the batch axis ((C, H, W) or (C,)).  A folded Conv2D has no tensor of its own:
    its BatchNormalization's tensor is the convolution's output.
    """

    def __init__(self, source):
        self.source = source
        self.topology = source.topology
        self.by_name = self.topology.by_name()
        self.folded = folded_convolutions(self.topology)
        self.bottleneck = bottleneck_layer(self.topology)
        self.nodes, self.initializers = [], []
        self.tensor, self.shape = {}, {}
        self.outputs = []  # (tensor name, shape) of the graph outputs

    def build(self):
        for layer in self.topology.layers:
            emit = getattr(self, "emit_" + layer.kind)
            # .get: a folded Conv2D has no tensor; its BatchNormalization does not read one.
            emit(layer, [self.tensor.get(name) for name in layer.inputs])
        self.outputs.insert(0, (self.tensor[self.bottleneck], self.shape[BOTTLENECK]))
        if self.shape[BOTTLENECK] != (2048,):
            raise ValueError(f"bottleneck has shape {self.shape[BOTTLENECK]}, expected (2048,)")
        return self

    # -- helpers ------------------------------------------------------------------------------

    def out_name(self, layer):
        if layer.name == self.bottleneck:
            return BOTTLENECK
        return layer.name

    def node(self, op, inputs, output, shape, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        self.shape[output] = shape
        return output

    def initializer(self, name, array):
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def finish(self, layer, output):
        self.tensor[layer.name] = output

    def alias(self, layer, source_tensor):
        """A layer that changes nothing at inference (Dropout, linear activation)."""
        name = self.out_name(layer)
        if name != layer.name:  # the special output names must exist as real tensors
            source_tensor = self.node("Identity", [source_tensor], name, self.shape[source_tensor],
                                      layer.name)
        self.finish(layer, source_tensor)

    def activation(self, layer, pre, activation):
        """Apply a Keras activation to tensor `pre`, naming the result after the layer."""
        shape = self.shape[pre]
        if layer.name == self.topology.output and layer.kind == "Dense":
            out = PROBABILITIES  # the classifier's activation output
        else:
            out = self.out_name(layer)
        if activation == "linear":
            return pre
        if activation == "relu":
            return self.node("Relu", [pre], out, shape, f"{layer.name}/Relu")
        if activation == "softmax" and len(shape) == 1:
            return self.node("Softmax", [pre], out, shape, f"{layer.name}/Softmax", axis=-1)
        raise ValueError(f"{layer.name}: unsupported activation {activation}")

    # -- one method per Keras layer kind -------------------------------------------------------

    def emit_InputLayer(self, layer, _inputs):
        _, height, width, channels = layer.config["batch_input_shape"]
        self.input_shape = (height, width, channels)
        # Keras is channels-last; ONNX Conv/Pool are channels-first.
        self.finish(layer, self.node("Transpose", [INPUT_NAME], layer.name,
                                     (channels, height, width), f"{layer.name}/to_nchw",
                                     perm=[0, 3, 1, 2]))

    def emit_Conv2D(self, layer, inputs):
        if layer.name not in self.folded:
            self.convolution(layer, inputs[0], None)

    def emit_BatchNormalization(self, layer, _inputs):
        conv = self.by_name[layer.inputs[0]]
        self.convolution(conv, self.tensor[conv.inputs[0]], layer)

    def convolution(self, conv, x, bn):
        """Conv (with the BN `bn` folded in when given) + the conv's own activation."""
        config = conv.config
        if config.get("dilation_rate", [1, 1]) != [1, 1]:
            raise ValueError(f"{conv.name}: dilated convolution")
        kernel, bias = fold_batch_norm(conv, self.source.weights[conv.name], bn,
                                       self.source.weights.get(bn.name) if bn else None)
        channels, height, width = self.shape[x]
        (kh, kw), (sh, sw) = config["kernel_size"], config["strides"]
        if kernel.shape != (kh, kw, channels, config["filters"]):
            raise ValueError(f"{conv.name}: kernel {kernel.shape} does not fit the layer")
        out_h, top, bottom = keras_padding(height, kh, sh, config["padding"])
        out_w, left, right = keras_padding(width, kw, sw, config["padding"])
        w = self.initializer(f"{conv.name}/kernel", kernel.transpose(3, 2, 0, 1))  # OIHW
        b = self.initializer(f"{conv.name}/bias", bias)
        owner = bn or conv  # the Keras layer whose output this is
        activation = "linear" if bn else config.get("activation", "linear")
        name = self.out_name(owner) if activation == "linear" else f"{conv.name}/conv"
        pre = self.node("Conv", [x, w, b], name, (config["filters"], out_h, out_w), conv.name,
                        kernel_shape=[kh, kw], strides=[sh, sw], pads=[top, left, bottom, right],
                        dilations=[1, 1])
        self.finish(owner, self.activation(owner, pre, activation))

    def emit_Activation(self, layer, inputs):
        if layer.config["activation"] == "linear":
            return self.alias(layer, inputs[0])
        self.finish(layer, self.activation(layer, inputs[0], layer.config["activation"]))

    def pool(self, layer, x, op):
        channels, height, width = self.shape[x]
        (kh, kw), (sh, sw) = layer.config["pool_size"], layer.config["strides"]
        out_h, top, bottom = keras_padding(height, kh, sh, layer.config["padding"])
        out_w, left, right = keras_padding(width, kw, sw, layer.config["padding"])
        shape = (channels, out_h, out_w)
        if (kh, kw) == (height, width) and layer.config["padding"] == "valid":
            # A window covering the whole map is a global pool; say so, so that the graph does
            # not depend on the map size (same values).
            return self.node("Global" + op, [x], self.out_name(layer), shape, layer.name)
        attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [top, left, bottom, right]}
        if op == "AveragePool":
            # Keras/TF 'same' average pooling divides by the number of real pixels in the window.
            attrs["count_include_pad"] = 0
        return self.node(op, [x], self.out_name(layer), shape, layer.name, **attrs)

    def emit_MaxPooling2D(self, layer, inputs):
        self.finish(layer, self.pool(layer, inputs[0], "MaxPool"))

    def emit_AveragePooling2D(self, layer, inputs):
        self.finish(layer, self.pool(layer, inputs[0], "AveragePool"))

    def emit_GlobalAveragePooling2D(self, layer, inputs):
        channels = self.shape[inputs[0]][0]
        pooled = self.node("GlobalAveragePool", [inputs[0]], f"{layer.name}/pool",
                           (channels, 1, 1), f"{layer.name}/pool")
        self.finish(layer, self.node("Flatten", [pooled], self.out_name(layer), (channels,),
                                     layer.name, axis=1))

    def emit_Flatten(self, layer, inputs):
        x = inputs[0]
        channels, *spatial = self.shape[x]
        if math.prod(spatial) != 1:
            # Keras flattens channels-last: go back to NHWC first so the order matches.
            x = self.node("Transpose", [x], f"{layer.name}/to_nhwc",
                          (*spatial, channels), f"{layer.name}/to_nhwc", perm=[0, 2, 3, 1])
        self.finish(layer, self.node("Flatten", [x], self.out_name(layer),
                                     (channels * math.prod(spatial),), layer.name, axis=1))

    def emit_Concatenate(self, layer, inputs):
        shapes = [self.shape[x] for x in inputs]
        if layer.config["axis"] not in (-1, len(shapes[0])):
            raise ValueError(f"{layer.name}: concatenation not on the channel axis")
        shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        self.finish(layer, self.node("Concat", inputs, self.out_name(layer), shape, layer.name,
                                     axis=1))

    def emit_Dropout(self, layer, inputs):
        self.alias(layer, inputs[0])

    def emit_Dense(self, layer, inputs):
        weights = self.source.weights[layer.name]
        (features,) = self.shape[inputs[0]]
        units = layer.config["units"]
        if weights["kernel"].shape != (features, units):
            raise ValueError(f"{layer.name}: kernel {weights['kernel'].shape} does not fit")
        bias = weights["bias"] if layer.config.get("use_bias", True) else np.zeros(units)
        is_head = layer.name == self.topology.output
        pre_name = LOGITS if is_head else f"{layer.name}/logits"
        pre = self.node("Gemm", [inputs[0], self.initializer(f"{layer.name}/kernel",
                                                             weights["kernel"]),
                                 self.initializer(f"{layer.name}/bias", bias)],
                        pre_name, (units,), layer.name)
        activation = layer.config.get("activation", "linear")
        if is_head:
            self.outputs.append((LOGITS, (units,)))
            if activation == "softmax":
                self.outputs.append((PROBABILITIES, (units,)))
            elif activation != "linear":
                raise ValueError(f"{layer.name}: classifier activation {activation}")
        self.finish(layer, self.activation(layer, pre, activation))


def value_info(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape])


def retrain_fields(*, input_name, layout, height, width, mean, std, bottleneck, labels, source,
                   converter):
    """How retrain must feed the model, as the Rust side reads it.

    The model input is (pixel / 255 - mean[c]) / std[c] for RGB pixels resized (bilinear) to
    height x width.  Stored as the model's description (scripts/description.py: ONNX metadata,
    or a sidecar <model>.onnx.json holding these fields as they are).
    """
    fields = {
        "input_name": input_name,
        "layout": layout,
        "height": height,
        "width": width,
        "color": "RGB",
        "mean": desc.triple_text(mean),
        "std": desc.triple_text(std),
        "resize": "bilinear",
        "bottleneck": bottleneck,
    }
    if labels:
        fields["labels"] = desc.labels_text(labels)
    fields["source"] = source
    fields["converter"] = converter
    return fields


def build_model(source, opset):
    """The ONNX model and the {Keras layer name: ONNX tensor name} map."""
    builder = OnnxBuilder(source).build()
    height, width, channels = builder.input_shape
    graph = helper.make_graph(
        builder.nodes, "inception_v3",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                       ["N", height, width, channels])],
        [value_info(name, shape) for name, shape in builder.outputs],
        builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="retrain scripts/convert_inception.py")
    model.ir_version = 8  # the IR of opset 17; readable by older runtimes too
    desc.write(model, retrain_fields(
        input_name=INPUT_NAME, layout="NHWC", height=height, width=width, mean=source.mean,
        std=source.std, bottleneck=BOTTLENECK, labels=source.labels, source=source.description,
        converter="scripts/convert_inception.py"))
    onnx.checker.check_model(model, full_check=True)
    if source.labels and builder.outputs[1:2] != [(LOGITS, (len(source.labels),))]:
        raise ValueError(f"{len(source.labels)} labels do not fit the classifier")
    return model, builder.tensor


# --------------------------------------------------------------------------------------------
# Numerical check: independent NumPy forward pass with the unfolded Keras weights
# --------------------------------------------------------------------------------------------

def windows(x, kernel, stride, padding, fill):
    """Pooling/convolution windows of NHWC `x`: [N, OH, OW, C, kh, kw] (a strided view)."""
    (kh, kw), (sh, sw) = kernel, stride
    out_h, top, bottom = keras_padding(x.shape[1], kh, sh, padding)
    out_w, left, right = keras_padding(x.shape[2], kw, sw, padding)
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
    view = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return view[:, ::sh, ::sw][:, :out_h, :out_w]


def ref_conv(layer, weights, x):
    kernel = weights["kernel"].astype(np.float64)  # [kh, kw, cin, cout]
    kh, kw, cin, cout = kernel.shape
    patches = windows(x, (kh, kw), layer.config["strides"], layer.config["padding"], 0.0)
    n, out_h, out_w = patches.shape[:3]
    # im2col: rows are output pixels, columns ordered (kh, kw, cin) like the kernel.
    columns = patches.transpose(0, 1, 2, 4, 5, 3).reshape(n * out_h * out_w, kh * kw * cin)
    y = (columns @ kernel.reshape(kh * kw * cin, cout)).reshape(n, out_h, out_w, cout)
    return y + weights["bias"] if layer.config.get("use_bias", True) else y


def ref_batch_norm(layer, weights, x):
    normalised = (x - weights["moving_mean"]) / np.sqrt(
        weights["moving_variance"].astype(np.float64) + layer.config["epsilon"])
    return normalised * weights.get("gamma", 1.0) + weights.get("beta", 0.0)


def ref_max_pool(layer, _weights, x):
    return windows(x, layer.config["pool_size"], layer.config["strides"], layer.config["padding"],
                   -np.inf).max(axis=(4, 5))


def ref_average_pool(layer, _weights, x):
    args = layer.config["pool_size"], layer.config["strides"], layer.config["padding"]
    total = windows(x, *args, 0.0).sum(axis=(4, 5))
    count = windows(np.ones((1, *x.shape[1:3], 1)), *args, 0.0).sum(axis=(4, 5))
    return total / count  # padding is not counted


def ref_dense(layer, weights, x):
    y = x @ weights["kernel"].astype(np.float64)
    return y + weights["bias"] if layer.config.get("use_bias", True) else y


def ref_activation(name, x):
    if name == "linear":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(f"unsupported activation {name}")


REFERENCE_OPS = {
    "InputLayer": lambda layer, w, x: x,
    "Conv2D": ref_conv,
    "BatchNormalization": ref_batch_norm,
    "Activation": lambda layer, w, x: x,  # the activation itself is applied below
    "MaxPooling2D": ref_max_pool,
    "AveragePooling2D": ref_average_pool,
    "GlobalAveragePooling2D": lambda layer, w, x: x.mean(axis=(1, 2)),
    "Flatten": lambda layer, w, x: x.reshape(len(x), -1),
    "Dropout": lambda layer, w, x: x,
    "Dense": ref_dense,
}


def reference_forward(source, x, keep):
    """float64 Keras-semantics forward pass in NHWC; returns {name: output} for names in `keep`.

    For a layer with an activation, "<name>:pre" is its output before the activation.
    """
    remaining = {}
    for layer in source.topology.layers:
        for name in layer.inputs:
            remaining[name] = remaining.get(name, 0) + 1
    values, kept = {}, {}
    for layer in source.topology.layers:
        if layer.kind == "InputLayer":
            inputs = [x.astype(np.float64)]
        else:
            inputs = [values[name] for name in layer.inputs]
        if layer.kind == "Concatenate":
            pre = np.concatenate(inputs, axis=layer.config["axis"])
        else:
            pre = REFERENCE_OPS[layer.kind](layer, source.weights.get(layer.name), inputs[0])
        out = ref_activation(layer.config.get("activation", "linear"), pre)
        values[layer.name] = out
        if layer.name in keep:
            kept[layer.name], kept[layer.name + ":pre"] = out, pre
        for name in layer.inputs:  # free feature maps nobody needs any more
            remaining[name] -= 1
            if remaining[name] == 0:
                del values[name]
    return kept


def check_images(count, directory, source, height, width, seed=0):
    """`count` images preprocessed as the metadata says ([N, H, W, 3] float32) and their names."""
    from PIL import Image

    paths = sorted(Path(directory).glob("*.jpg"))[:count] if directory.is_dir() else []
    if paths:
        pixels = [np.asarray(Image.open(p).convert("RGB").resize((width, height),
                                                                  Image.BILINEAR)) for p in paths]
        names = [p.name for p in paths]
    else:
        print(f"no JPEGs in {directory}; using random images")
        rng = np.random.default_rng(seed)
        pixels = list(rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8))
        names = [f"random{i}" for i in range(count)]
    batch = np.stack(pixels).astype(np.float32) / 255.0
    return ((batch - np.float32(source.mean)) / np.float32(source.std)).astype(np.float32), names


def with_extra_outputs(model, tensors):
    """A copy of `model` that also outputs the given intermediate tensors (shape left open)."""
    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    present = {o.name for o in extended.graph.output}
    extended.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None)
                                 for t in tensors if t not in present)
    return extended


def ort_session(model_or_path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    payload = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])


def compare(label, got, want):
    """Print the error of `got` (float32) against `want` (float64 reference); True if within."""
    abs_err = float(np.max(np.abs(got - want)))
    rel_err = abs_err / max(float(np.max(np.abs(want))), 1e-12)
    ok = rel_err <= REL_TOLERANCE
    print(f"  {label:<34} {str(list(want.shape)):<18} max|ref| {np.max(np.abs(want)):10.4g}  "
          f"max abs err {abs_err:9.3g}  rel {rel_err:9.3g}  {'ok' if ok else 'FAIL'}")
    return ok


def run_check(model, path, tensor_of, source, count, images_dir):
    """Compare ONNX Runtime on the written model with the NumPy reference; True if all agree."""
    topology = source.topology
    first_conv_bn = next(l.name for l in topology.layers if l.kind == "BatchNormalization")
    probes = [first_conv_bn, "activation_1", "mixed0", "mixed5", "mixed10"]
    bottleneck, head = bottleneck_layer(topology), topology.output
    _, height, width, _ = topology.layers[0].config["batch_input_shape"]
    x, names = check_images(count, images_dir, source, height, width)

    start = time.perf_counter()
    reference = reference_forward(source, x, set(probes) | {bottleneck, head})
    print(f"numpy reference forward: {time.perf_counter() - start:.1f} s")

    output_names = [o.name for o in model.graph.output]
    shipped = dict(zip(output_names, ort_session(str(path)).run(None, {INPUT_NAME: x})))
    extended = ort_session(with_extra_outputs(model, [tensor_of[p] for p in probes]))
    probed = dict(zip([o.name for o in extended.get_outputs()],
                      extended.run(None, {INPUT_NAME: x})))

    print(f"ONNX Runtime vs float64 NumPy reference on {len(x)} images "
          f"(tolerance rel {REL_TOLERANCE:g} = max abs err / max|ref|):")
    ok = True
    for probe in probes:
        got = probed[tensor_of[probe]].transpose(0, 2, 3, 1)  # NCHW -> Keras NHWC
        ok &= compare(probe + (" (conv+BN)" if probe == first_conv_bn else ""), got,
                      reference[probe])
    ok &= compare(f"{BOTTLENECK} ({bottleneck})", shipped[BOTTLENECK], reference[bottleneck])
    if LOGITS in shipped:
        ok &= compare(f"{LOGITS} ({head} pre-softmax)", shipped[LOGITS], reference[head + ":pre"])
    if PROBABILITIES in shipped:
        probabilities = shipped[PROBABILITIES]
        ok &= compare(f"{PROBABILITIES} ({head})", probabilities, reference[head])
        sums_ok = bool(np.all(np.abs(probabilities.sum(axis=1) - 1) < 1e-5)
                       and np.all(probabilities >= 0))
        ok &= sums_ok
        print(f"  softmax rows sum to 1: {'ok' if sums_ok else 'FAIL'}")
        labels = source.labels or [str(i) for i in range(probabilities.shape[1])]
        for name, row in zip(names, probabilities):
            ranked = sorted(zip(row, labels), reverse=True)[:3]
            print(f"  {name}: " + ", ".join(f"{label} {p:.3f}" for p, label in ranked))
    return ok


# --------------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--nsfwjs", metavar="TGZ_OR_DIR",
                        help=f"{NSFWJS_SPEC} tarball or unpacked package "
                             f"(default: fetch with `npm pack {NSFWJS_SPEC}`)")
    source.add_argument("--keras-h5", metavar="PATH",
                        help="Keras inception_v3_weights_tf_dim_ordering_tf_kernels[_notop].h5")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--check-images", type=int, default=2, metavar="N",
                        help="images for the numerical check; 0 skips it (default 2)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="directory of JPEGs for the check (default: MTFL AFLW if present)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.keras_h5:
            source = load_keras_h5(args.keras_h5)
        else:
            source = load_nsfwjs(args.nsfwjs, tmp)
    loaded = time.perf_counter()
    parameters = sum(w.size for layer in source.weights.values() for w in layer.values())
    print(f"loaded {source.description}: {len(source.topology.layers)} Keras layers, "
          f"{parameters:,} weights ({loaded - start:.1f} s)")

    model, tensor_of = build_model(source, args.opset)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, args.out)
    print(f"wrote {args.out} ({len(model.graph.node)} nodes, opset {args.opset}, "
          f"{time.perf_counter() - loaded:.1f} s)")
    print(f"  size {args.out.stat().st_size:,} bytes  sha256 {sha256_of(args.out)}")
    for value in model.graph.input:
        print(f"  input  {value.name} {onnx.helper.printable_type(value.type)}")
    for value in model.graph.output:
        print(f"  output {value.name} {onnx.helper.printable_type(value.type)}")
    for prop in model.metadata_props:
        print(f"  {prop.key} = {prop.value}")
    print(f"conversion took {time.perf_counter() - start:.1f} s")

    if args.check_images > 0:
        if not run_check(model, args.out, tensor_of, source, args.check_images, args.images):
            print("numerical check FAILED", file=sys.stderr)
            return 1
        print(f"numerical check passed (total {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
