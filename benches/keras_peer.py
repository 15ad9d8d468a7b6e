#!/usr/bin/env python3
"""The Keras twin of `cargo bench --bench train`: the same networks, batches and timing, in TF.

  .venv-tf/bin/python benches/keras_peer.py [--only tcdcn|cascade_cnn|inception] [--batch 64]
      [--micro 8,32] [--repeats 5] [--inception-repeats 3] [--warmups 2] [--threads N]
      [--inputs FILE]

`cargo bench --bench train -- --peer` runs it once per network after its own measurement, on
the batch it measured (--inputs: that batch's float32 values, little-endian, row after row),
and prints the time ratios. Alone, it measures every network on a uniform [-1, 1] batch.

The networks, in tf.keras (TensorFlow 2.15.1, tensorflow-cpu, as `scripts/setup.sh --faceres`
installs into .venv-tf), built as scripts/scratch_nets.py and scripts/make_finetune.py build the
ONNX graphs retrain trains:

  tcdcn        [N,60,60,3] NHWC, conv 5x5x20, pool, 5x5x48, pool, 3x3x64, pool, 3x3x80, fc 256
               ReLU, dropout 0.4, class layer: 284,530 parameters (asserted)
  cascade_cnn  [N,150,150,3] NHWC, conv 5x5x20, 3x3x40, 3x3x60, 2x2x80 (valid, ReLU, each with a
               2x2 max-pool), one inception block (1x1 | 1x1->3x3 | 1x1->5x5 | 3x3/1 max-pool
               ->1x1, 'same'), fc 160 ReLU, class layer: 819,462 parameters (asserted)
  inception    tf.keras.applications.InceptionV3(weights=None, include_top=False, pooling='avg')
               on [N,299,299,3], its BatchNormalization frozen as in inference (trainable=False,
               called with training=False), dropout 0.2 and a new 2-way Dense: retrain's phase 2
               of the fine-tuning (make_finetune.py: every other parameter trains)

What is timed, as benches/train.rs times retrain (`interleaved`): after --warmups calls of each
(the first traces the tf.function), --repeats rounds of [forward untimed, forward timed, step
timed], medians (the upper one of an even count, as the bench takes). Forward =
`model(x, training=False)` in a tf.function, the logits copied out. Step = a tf.function with a
GradientTape: the weighted mean softmax cross-entropy (weights 1, labels i % 2), its gradients
and one optimizer update: Adam(1e-4) for the small nets at --batch; for InceptionV3 the
batch-100 phase-2 step as retrain's Accumulator runs it: ceil(100 / M) micro-batches of M rows
(the last padded with weight-0 rows), each one's gradients scaled by its share of the weight and
summed into accumulators, then one RMSprop update (learning rate 1e-4, rho 0.9, momentum 0.9,
epsilon 1.0; weight decay 4e-5 added to the gradient, as retrain's update.onnx does); its
forward is the eval forward at M, run as many times as the step has micro-batches, per call.
InceptionV3 takes --inception-repeats rounds (the bench's min(repeats, 3)). Intra-op threads =
--threads (default: every core), inter-op 1, as retrain's sessions.

Prints one JSON object on stdout (everything else goes to stderr): the TF version, threads, CPU
and per network its batch, forward and step seconds and images/s, parameter counts.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# stdout carries the JSON alone: whatever TF or Keras writes to file descriptor 1 goes to stderr
_JSON_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr

import numpy as np  # noqa: E402

PARAMS = {"tcdcn": 284_530, "cascade_cnn": 819_462}
INCEPTION_BASE_PARAMS = 21_802_784  # tf.keras.applications.InceptionV3(include_top=False)
SIZES = {"tcdcn": 60, "cascade_cnn": 150, "inception": 299}
FINETUNE_BATCH = 100
LEARNING_RATE = 1e-4
RMSPROP = dict(rho=0.9, momentum=0.9, epsilon=1.0)  # make_artifacts.py's rmsprop
WEIGHT_DECAY = 4e-5  # make_finetune.py's, on the phase-2 gradient


def tcdcn(keras, classes=2, dropout=0.4):
    L = keras.layers
    x = inputs = keras.Input((60, 60, 3), name="input")
    for k, width, pool in [(5, 20, True), (5, 48, True), (3, 64, True), (3, 80, False)]:
        x = L.Conv2D(width, k, activation="relu", kernel_initializer="he_normal")(x)
        if pool:
            x = L.MaxPooling2D(2)(x)
    x = L.Dense(256, activation="relu", kernel_initializer="he_normal", name="bottleneck")(L.Flatten()(x))
    x = L.Dropout(dropout)(x)
    return keras.Model(inputs, L.Dense(classes, name="logits")(x), name="tcdcn")


def cascade_cnn(keras, classes=2):
    L = keras.layers

    def conv(x, width, k, padding="valid"):
        return L.Conv2D(width, k, padding=padding, activation="relu", kernel_initializer="he_normal")(x)

    x = inputs = keras.Input((150, 150, 3), name="input")
    for k, width in [(5, 20), (3, 40), (3, 60), (2, 80)]:
        x = L.MaxPooling2D(2)(conv(x, width, k))
    branches = [conv(x, 32, 1),
                conv(conv(x, 24, 1), 32, 3, "same"),
                conv(conv(x, 8, 1), 16, 5, "same"),
                conv(L.MaxPooling2D(3, strides=1, padding="same")(x), 16, 1)]
    x = L.Concatenate()(branches)
    x = L.Dense(160, activation="relu", kernel_initializer="he_normal", name="bottleneck")(L.Flatten()(x))
    return keras.Model(inputs, L.Dense(classes, name="logits")(x), name="cascade_cnn")


def inception(keras, classes=2, dropout=0.2):
    L = keras.layers
    base = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                          input_shape=(299, 299, 3))
    assert base.count_params() == INCEPTION_BASE_PARAMS, base.count_params()
    for layer in base.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.trainable = False
    inputs = keras.Input((299, 299, 3), name="input")
    x = base(inputs, training=False)  # frozen statistics, also inside a training step
    x = L.Dropout(dropout)(x)
    return keras.Model(inputs, L.Dense(classes, name="Logits")(x), name="inception_v3_finetune")


def median(values):
    return sorted(values)[len(values) // 2]


def interleaved(repeats, warmups, forward, step):
    """benches/train.rs's `interleaved`: both see the same moments of a drifting machine."""
    for _ in range(warmups):
        forward()
        step()
    f, s = [], []
    for _ in range(repeats):
        forward()
        t = time.perf_counter()
        forward()
        f.append(time.perf_counter() - t)
        t = time.perf_counter()
        step()
        s.append(time.perf_counter() - t)
    return median(f), median(s)


def batch_images(args, rows, size):
    n = rows * size * size * 3
    if args.inputs:
        values = np.fromfile(args.inputs, dtype="<f4")
        if values.size < n:
            raise SystemExit(f"--inputs {args.inputs}: {values.size} values, {rows} images need {n}")
        values = values[:n]
    else:
        values = np.random.default_rng(1).uniform(-1.0, 1.0, n).astype(np.float32)
    return values.reshape(rows, size, size, 3)


def loss_of(tf, logits, labels, weights):
    """Weighted mean cross-entropy, as make_artifacts.py's loss: sum(w * ce) / max(sum(w), tiny)."""
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1e-12)


def counts(model):
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return model.count_params(), trainable


def small_net(tf, keras, name, args, common):
    model = {"tcdcn": tcdcn, "cascade_cnn": cascade_cnn}[name](keras)
    params, trainable = counts(model)
    assert params == PARAMS[name], f"{name}: {params} parameters, scripts/scratch_nets.py's has {PARAMS[name]}"
    size, batch = SIZES[name], args.batch
    images = batch_images(args, batch, size)
    labels = np.arange(batch, dtype=np.int64) % 2
    weights = np.ones(batch, np.float32)
    optimizer = keras.optimizers.Adam(LEARNING_RATE)  # beta 0.9 / 0.999, as make_artifacts.py's adam
    spec = tf.TensorSpec([batch, size, size, 3], tf.float32)

    @tf.function(input_signature=[spec])
    def forward(x):
        return model(x, training=False)

    @tf.function(input_signature=[spec, tf.TensorSpec([batch], tf.int64), tf.TensorSpec([batch], tf.float32)])
    def train_step(x, y, w):
        with tf.GradientTape() as tape:
            loss = loss_of(tf, model(x, training=True), y, w)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    fwd, step = interleaved(args.repeats, args.warmups, lambda: forward(images).numpy(),
                            lambda: train_step(images, labels, weights).numpy())
    return {"network": name, "batch": batch, "input": [batch, size, size, 3], "optimizer": "Adam",
            "forward_s": fwd, "step_s": step, "forward_images_per_s": batch / fwd,
            "step_images_per_s": batch / step, "params": params, "trainable_params": trainable,
            "repeats": args.repeats, "warmups": args.warmups, **common}


def inception_phase2(tf, keras, micro, args, common, model):
    params, trainable = counts(model)
    size, pieces = SIZES["inception"], -(-FINETUNE_BATCH // micro)
    images = batch_images(args, micro, size)
    labels = np.arange(micro, dtype=np.int64) % 2
    piece_weights = [np.array([1.0 if k * micro + j < FINETUNE_BATCH else 0.0 for j in range(micro)], np.float32)
                     for k in range(pieces)]
    total = sum(float(w.sum()) for w in piece_weights)
    shares = [np.float32(w.sum() / total) for w in piece_weights]
    variables = model.trainable_variables
    sums = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    optimizer = keras.optimizers.RMSprop(LEARNING_RATE, **RMSPROP)
    spec = tf.TensorSpec([micro, size, size, 3], tf.float32)

    @tf.function(input_signature=[spec])
    def forward(x):
        return model(x, training=False)

    @tf.function(input_signature=[spec, tf.TensorSpec([micro], tf.int64), tf.TensorSpec([micro], tf.float32),
                                  tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)])
    def accumulate(x, y, w, share, keep):
        """keep 0 on the first micro-batch of a step (the sums start again), 1 after it."""
        with tf.GradientTape() as tape:
            loss = loss_of(tf, model(x, training=True), y, w)
        for s, g in zip(sums, tape.gradient(loss, variables)):
            s.assign(keep * s + share * g)
        return loss

    @tf.function
    def update():
        optimizer.apply_gradients([(s + WEIGHT_DECAY * v, v) for s, v in zip(sums, variables)])

    def step():
        for k in range(pieces):
            accumulate(images, labels, piece_weights[k], shares[k], np.float32(k > 0)).numpy()
        update()

    def forwards():
        for _ in range(pieces):
            forward(images).numpy()

    fwd, batch_step = interleaved(args.inception_repeats, args.warmups, forwards, step)
    fwd /= pieces
    return {"network": "inception_v3", "micro": micro, "batch": FINETUNE_BATCH, "pieces": pieces,
            "input": [micro, size, size, 3], "optimizer": "RMSprop",
            "forward_s": fwd, "step_s": batch_step, "batch100_step_s": batch_step,
            "forward_images_per_s": micro / fwd, "step_images_per_s": FINETUNE_BATCH / batch_step,
            "params": params, "trainable_params": trainable,
            "repeats": args.inception_repeats, "warmups": args.warmups, **common}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["tcdcn", "cascade_cnn", "inception"])
    parser.add_argument("--batch", type=int, default=64, help="the small nets' batch")
    parser.add_argument("--micro", default="8,32", help="InceptionV3 micro-batches")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inception-repeats", type=int, default=3, help="benches/train.rs: min(repeats, 3)")
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument("--inputs", help="float32 file of the batch (the --only network's; the "
                                         "largest micro-batch's for InceptionV3)")
    args = parser.parse_args(argv)
    micro = [int(m) for m in args.micro.split(",") if m]
    if args.inputs and not args.only:
        parser.error("--inputs needs --only: it holds one network's batch")

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras = tf.keras
    common = {"tf_version": tf.__version__, "intra_op_threads": args.threads, "inter_op_threads": 1}
    tf.random.set_seed(0)
    keras.utils.set_random_seed(0)
    networks = {}
    for name in ["tcdcn", "cascade_cnn"]:
        if args.only in (None, name):
            print(f"keras peer: {name} batch {args.batch}", file=sys.stderr)
            networks[name] = small_net(tf, keras, name, args, common)
    if args.only in (None, "inception") and micro:
        model = inception(keras)
        for m in micro:
            print(f"keras peer: inception_v3 micro {m}", file=sys.stderr)
            networks[f"inception_v3_micro{m}"] = inception_phase2(tf, keras, m, args, common, model)
    import keras as keras_package

    out = {"tf_version": tf.__version__, "keras_version": keras_package.__version__,
           "intra_op_threads": args.threads, "inter_op_threads": 1, "cpu": cpu_model(),
           "cores": os.cpu_count(), "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
           "networks": networks}
    _JSON_OUT.write(json.dumps(out) + "\n")
    _JSON_OUT.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
