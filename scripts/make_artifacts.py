#!/usr/bin/env python3
"""Training artifacts for any forward ONNX graph, in standard ONNX ops only.

Stock ONNX Runtime (CPU or CUDA provider) runs them; `retrain train --artifacts DIR` drives
them from Rust.  The folder written:

  manifest.json    what every graph takes and returns, the optimizer and its settings, the
                   sha256 of each file; its own sha256 is the *artifact hash* that every
                   checkpoint records
  forward.onnx     the forward graph as given (export writes trained weights back into it)
  train_step.onnx  forward + softmax cross-entropy + backward (onnx-ad reverse mode) + optimizer
                   update, for a FIXED batch (reverse mode needs declared input shapes for Conv
                   and pooling).  Inputs: the image batch, `labels` int64 [B] ([B, T] and a
                   `targets` [B, 10] input for a multi-task graph, see add_multitask_loss), `weights` [B]
                   (0 for padding rows of a short last batch), one `dropout_mask:<node>` per
                   Dropout node (values 0 or 1/(1-ratio), drawn by the caller from its seed),
                   `lr` and `step` (float scalars; step counts from 1), the trainable
                   parameters and the optimizer slots.  Outputs: `loss`, `correct` (weighted
                   count of right answers) and `updated:<name>` for every parameter and slot.
  gradient.onnx    the same without the update: `loss`, `correct`, `grad:<param>` (for
                   gradient accumulation and for the gradient checks)
  eval.onnx        forward only, dynamic batch, trainable parameters as inputs -> `logits`
  init.h5          the initial checkpoint: parameters from the forward graph, zero slots,
                   step 0, epoch 0 (layout in docs/formats.md; gzip-compressed)

With --micro-batches M1,M2,... also (gradient accumulation, for batches that do not fit):
  accumulate_bM.onnx  the gradient graph at micro-batch M that adds its gradient, times the
                   scalar `acc_scale`, to the running sums `acc:<param>` (or starts them when
                   the bool `acc_first` is true) -> `accumulated:<param>`, `loss`, `correct`
  update.onnx      the optimizer update alone: parameters, slots, `acc:<param>` (the summed
                   gradient), `lr`, `step` -> `updated:<name>`

Which parameters train is a choice: all initializers of floating type with rank >= 1 (the
default), or those matching --trainable glob patterns; the rest stay constants in every graph.

  make_artifacts.py onnx/tcdcn.onnx --out artifacts/tcdcn --batch 64 --optimizer adam
"""

import argparse
import copy
import fnmatch
import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

sys.path.insert(0, str(Path(__file__).resolve().parent))
import description as desc  # noqa: E402

FORMAT = "retrain-training-artifacts"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "retrain-train-checkpoint"
CHECKPOINT_VERSION = 1
OPSET = 17
LABELS, WEIGHTS, LR, STEP, TARGETS = "labels", "weights", "lr", "step", "targets"
LOSS, CORRECT, LOGITS = "loss", "correct", "logits"
MASK_PREFIX, UPDATED_PREFIX, GRAD_PREFIX = "dropout_mask:", "updated:", "grad:"
ACC_PREFIX, ACCUMULATED_PREFIX, ACC_FIRST, ACC_SCALE = "acc:", "accumulated:", "acc_first", "acc_scale"

# Optimizer: slots per parameter and default hyper-parameters.  Conventions are PyTorch's
# (torch.optim.SGD / Adam / AdamW / RMSprop), which docs/training.md states in full.
OPTIMIZERS = {
    "sgd": (["momentum"], dict(momentum=0.9, weight_decay=0.0)),
    "adam": (["m", "v"], dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)),
    "adamw": (["m", "v"], dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
    "rmsprop": (["square", "momentum"], dict(rho=0.9, momentum=0.9, eps=1.0, weight_decay=4e-5)),
}
NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


def slot_name(slot, param):
    return f"opt:{slot}:{param}"


# --------------------------------------------------------------------------------------------
# The forward graph made trainable
# --------------------------------------------------------------------------------------------

def select_trainable(model, patterns):
    """Floating initializers of rank >= 1, filtered by glob patterns (None = all)."""
    floats = [t.name for t in model.graph.initializer
              if t.data_type in NUMPY and len(t.dims) >= 1]
    if not patterns:
        return floats
    chosen = [n for n in floats if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in floats)]
    if unused:
        raise SystemExit(f"--trainable {', '.join(unused)} matches no parameter "
                         f"(parameters: {', '.join(floats)})")
    return chosen


def image_input(model):
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise SystemExit(f"the forward graph must have one image input, it has {[i.name for i in inputs]}")
    return inputs[0]


def elem_type(model):
    """The float type of the graph; its first input is the image batch in every graph here."""
    return model.graph.input[0].type.tensor_type.elem_type


def with_batch(value, batch):
    value = copy.deepcopy(value)
    dim = value.type.tensor_type.shape.dim[0]
    if batch is None:
        dim.dim_param = "N"
    else:
        dim.dim_value = batch
    return value


def promote_params(model, trainable, batch):
    """A copy whose trainable initializers are graph inputs and whose batch is `batch`."""
    model = copy.deepcopy(model)
    graph = model.graph
    by_name = {t.name: t for t in graph.initializer}
    params = [by_name[n] for n in trainable]
    kept = [t for t in graph.initializer if t.name not in set(trainable)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    image = with_batch(image_input(model), batch)
    others = [i for i in graph.input if i.name != image.name and i.name not in by_name]
    del graph.input[:]
    graph.input.extend([image, *others])
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in params)
    for out in graph.output:
        out.CopyFrom(with_batch(out, batch))
    return model


def static_shapes(model):
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def dropout_to_masks(model):
    """Replace inference-mode Dropout by `x * mask`; the mask is a graph input.

    ONNX Dropout in training mode has no reverse rule in onnx-ad and its seed attribute is
    fixed per node; a mask input makes every step reproducible from the caller's seed."""
    shapes = static_shapes(model)
    graph, masks, nodes = model.graph, [], []
    dtype = elem_type(model)
    for node in graph.node:
        if node.op_type != "Dropout":
            nodes.append(node)
            continue
        ratio = dropout_ratio(model, node)
        shape = shapes.get(node.input[0])
        if shape is None or None in shape:
            raise SystemExit(f"Dropout '{node.name}': input shape {shape} is not static")
        mask = MASK_PREFIX + (node.name or node.output[0])
        graph.input.append(helper.make_tensor_value_info(mask, dtype, shape))
        nodes.append(helper.make_node("Mul", [node.input[0], mask], [node.output[0]], name=node.name))
        masks.append({"input": mask, "shape": shape, "ratio": ratio})
    del graph.node[:]
    graph.node.extend(nodes)
    return masks


def dropout_ratio(model, node):
    if len(node.input) < 2 or not node.input[1]:
        return 0.5
    for t in model.graph.initializer:
        if t.name == node.input[1]:
            return float(numpy_helper.to_array(t))
    raise SystemExit(f"Dropout '{node.name}': ratio '{node.input[1]}' is not an initializer")


def loss_writers(graph, dtype):
    """const(name, value[, type]) adds an initializer, n(op, inputs, out, **attrs) a node named
    after its one output; both return the name."""
    def const(name, value, t=dtype):
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=NUMPY.get(t, np.int64)), name))
        return name

    def n(op, inputs, out, **attrs):
        graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    return const, n


def add_loss(model, logits, classes):
    """loss = -sum_i w_i * log_softmax(logits_i)[label_i] / max(sum_i w_i, 1e-12); `correct`
    = sum_i w_i * [argmax logits_i == label_i].  Written out in plain ops: onnx-ad has no
    reverse rule for SoftmaxCrossEntropyLoss."""
    graph = model.graph
    dtype = elem_type(model)
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    batch = batch.dim_value if batch.HasField("dim_value") else "N"
    graph.input.append(helper.make_tensor_value_info(LABELS, TensorProto.INT64, [batch]))
    graph.input.append(helper.make_tensor_value_info(WEIGHTS, dtype, [batch]))
    const, n = loss_writers(graph, dtype)

    class_ids = const("loss/class_ids", np.arange(classes), TensorProto.INT64)
    axis1 = const("loss/axis1", [1], TensorProto.INT64)
    tiny = const("loss/tiny", 1e-12)
    # one-hot as Equal + Cast: ORT has no float64 OneHot, and the gradient checks run float64
    column = n("Unsqueeze", [LABELS, axis1], "loss/label_column")
    onehot = n("Cast", [n("Equal", [column, class_ids], "loss/is_label")], "loss/onehot", to=dtype)
    logp = n("LogSoftmax", [logits], "loss/log_softmax", axis=-1)
    picked = n("ReduceSum", [n("Mul", [onehot, logp], "loss/picked_all"), axis1], "loss/picked", keepdims=0)
    total = n("ReduceSum", [n("Mul", [picked, WEIGHTS], "loss/weighted")], "loss/total", keepdims=0)
    norm = n("Max", [n("ReduceSum", [WEIGHTS], "loss/weight_sum", keepdims=0), tiny], "loss/norm")
    n("Neg", [n("Div", [total, norm], "loss/mean")], LOSS)
    hit = n("Equal", [n("ArgMax", [logits], "loss/argmax", axis=-1, keepdims=0), LABELS], "loss/hit")
    n("ReduceSum", [n("Mul", [n("Cast", [hit], "loss/hitf", to=dtype), WEIGHTS], "loss/hitw")],
      CORRECT, keepdims=0)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(LOSS, dtype, []),
                         helper.make_tensor_value_info(CORRECT, dtype, [])])


def tasks_of(forward):
    """The forward graph's tasks (description key `tasks`, written by scratch_nets.py for
    the multi-task TCDCN), or None for a one-attribute graph."""
    text = desc.read(forward).get("tasks")
    if text is None:
        return None
    tasks = json.loads(text)
    for t in tasks:
        if t["kind"] not in ("classes", "landmarks"):
            raise SystemExit(f"task {t['name']}: unknown kind '{t['kind']}' (classes or landmarks)")
    return tasks


def add_multitask_loss(model, tasks):
    """loss = sum_t weight_t * loss_t over the tasks' own output tensors.  A class task t reads
    column t of `labels` int64 [B, T] (T class tasks; -1 = unknown, left out of its mean);
    loss_t is its weighted mean cross-entropy over the rows that know it.  The landmark task
    reads `targets` [B, 10]: 0.5 x the squared error summed over the coordinates, weighted
    mean over rows.  `correct` = the weighted right answers summed over class tasks / T, so
    correct / rows is the mean accuracy."""
    graph = model.graph
    dtype = elem_type(model)
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_value
    classes = [t for t in tasks if t["kind"] == "classes"]
    values = [t for t in tasks if t["kind"] == "landmarks"]
    graph.input.append(helper.make_tensor_value_info(LABELS, TensorProto.INT64, [batch, len(classes)]))
    graph.input.append(helper.make_tensor_value_info(WEIGHTS, dtype, [batch]))
    if values:
        graph.input.append(helper.make_tensor_value_info(TARGETS, dtype, [batch, sum(t["width"] for t in values)]))

    const, n = loss_writers(graph, dtype)

    axis1 = const("loss/axis1", [1], TensorProto.INT64)
    tiny = const("loss/tiny", 1e-12)
    weight_sum = n("Max", [n("ReduceSum", [WEIGHTS], "loss/weight_sum", keepdims=0), tiny], "loss/norm")
    terms, hits = [], []
    for k, t in enumerate(classes):
        p = f"loss/{t['name']}"
        column = n("Gather", [LABELS, const(f"{p}/column", k, TensorProto.INT64)], f"{p}/label", axis=1)
        ids = const(f"{p}/class_ids", np.arange(t["width"]), TensorProto.INT64)
        onehot = n("Cast", [n("Equal", [n("Unsqueeze", [column, axis1], f"{p}/label_column"), ids], f"{p}/is_label")],
                   f"{p}/onehot", to=dtype)
        known = n("Mul", [n("ReduceSum", [onehot, axis1], f"{p}/known", keepdims=0), WEIGHTS], f"{p}/known_weight")
        logp = n("LogSoftmax", [t["tensor"]], f"{p}/log_softmax", axis=-1)
        picked = n("ReduceSum", [n("Mul", [onehot, logp], f"{p}/picked_all"), axis1], f"{p}/picked", keepdims=0)
        total = n("ReduceSum", [n("Mul", [picked, WEIGHTS], f"{p}/weighted")], f"{p}/total", keepdims=0)
        norm = n("Max", [n("ReduceSum", [known], f"{p}/known_sum", keepdims=0), tiny], f"{p}/norm")
        mean = n("Neg", [n("Div", [total, norm], f"{p}/mean")], f"{p}/cross_entropy")
        terms.append(n("Mul", [mean, const(f"{p}/task_weight", t["weight"])], f"{p}/term"))
        hit = n("Equal", [n("ArgMax", [t["tensor"]], f"{p}/argmax", axis=-1, keepdims=0), column], f"{p}/hit")
        hits.append(n("ReduceSum", [n("Mul", [n("Cast", [hit], f"{p}/hitf", to=dtype), known], f"{p}/hitw")],
                      f"{p}/correct", keepdims=0))
    offset = 0
    for t in values:
        p = f"loss/{t['name']}"
        starts, ends = const(f"{p}/start", [offset], TensorProto.INT64), const(f"{p}/end", [offset + t["width"]], TensorProto.INT64)
        target = n("Slice", [TARGETS, starts, ends, axis1], f"{p}/target")
        offset += t["width"]
        diff = n("Sub", [t["tensor"], target], f"{p}/diff")
        sq = n("ReduceSum", [n("Mul", [diff, diff], f"{p}/squared"), axis1], f"{p}/row_error", keepdims=0)
        total = n("ReduceSum", [n("Mul", [sq, WEIGHTS], f"{p}/weighted")], f"{p}/total", keepdims=0)
        half = const(f"{p}/half_weight", 0.5 * t["weight"])
        terms.append(n("Mul", [n("Div", [total, weight_sum], f"{p}/mean"), half], f"{p}/term"))

    def add_all(names, out):
        acc = names[0]
        for i, x in enumerate(names[1:], 1):
            acc = n("Add", [acc, x], out if i == len(names) - 1 else f"{out}/{i}")
        if acc != out:
            n("Identity", [acc], out)
        return out

    add_all(terms, LOSS)
    if hits:
        n("Div", [add_all(hits, "loss/correct_sum"), const("loss/class_tasks", float(len(hits)))], CORRECT)
    else:
        const(CORRECT, 0.0)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(LOSS, dtype, []),
                         helper.make_tensor_value_info(CORRECT, dtype, [])])


def loss_model(forward, trainable, batch, logits=LOGITS):
    """The forward graph with parameters as inputs, dropout masks and the loss on top (the
    tasks' losses for a multi-task graph)."""
    shapes = static_shapes(promote_params(forward, [], 1))
    if logits not in shapes:
        raise SystemExit(f"the forward graph has no tensor '{logits}' (the class scores)")
    classes = shapes[logits][-1]
    model = promote_params(forward, trainable, batch)
    masks = dropout_to_masks(model)
    tasks = tasks_of(forward)
    if tasks:
        add_multitask_loss(model, tasks)
    else:
        add_loss(model, logits, classes)
    prune_unused(model)
    return model, masks, classes


def prune_unused(model):
    """Drop nodes that feed neither loss nor correct (probabilities, extra outputs)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


# --------------------------------------------------------------------------------------------
# Backward pass and optimizer update
# --------------------------------------------------------------------------------------------

def gradient_model(forward, trainable, batch, fast=True, seed_input=None):
    """loss, correct and `grad:<param>` (the parameter's shape), by onnx-ad reverse mode
    (with the faster reverse rules of fast_rules.py unless `fast` is False).  The loss's
    adjoint seed is 1, or the float scalar input `seed_input` (the gradients come out times it)."""
    import onnx_ad

    import fast_rules

    model, masks, classes = loss_model(forward, trainable, batch)
    with fast_rules.installed(fast):
        reverse = onnx_ad.reverse(model, inputs=trainable, outputs=[LOSS], layout="onnx")
    graph = reverse.graph
    seed = [i for i in graph.input if i.name.startswith("adj_")]
    if len(seed) != 1:
        raise SystemExit(f"onnx-ad gave seed inputs {[i.name for i in seed]}, expected one")
    # the loss is a scalar: its adjoint seed is the constant [1.0] or the given scalar
    graph.input.remove(seed[0])
    if seed_input is None:
        graph.initializer.append(numpy_helper.from_array(np.ones([1], NUMPY[elem_type(model)]), seed[0].name))
    else:
        graph.input.append(helper.make_tensor_value_info(seed_input, elem_type(model), []))
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{seed_input}/shape"))
        graph.node.insert(0, helper.make_node("Reshape", [seed_input, f"{seed_input}/shape"], [seed[0].name],
                                              name=f"{seed_input}/as_seed"))
    outputs = {o.name: o for o in graph.output}
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    del graph.output[:]
    graph.output.extend([outputs[LOSS], outputs[CORRECT]])
    dtype = elem_type(model)
    for name in trainable:
        adj = _adjoint_output(outputs, name)
        shape_const = f"{GRAD_PREFIX}{name}/shape"
        graph.initializer.append(numpy_helper.from_array(np.array(shapes[name], np.int64), shape_const))
        graph.node.append(helper.make_node("Reshape", [adj, shape_const], [GRAD_PREFIX + name],
                                           name=GRAD_PREFIX + name))
        graph.output.append(helper.make_tensor_value_info(GRAD_PREFIX + name, dtype, shapes[name]))
    set_opset(reverse)
    return reverse, masks, classes


def _adjoint_output(outputs, param):
    candidates = [n for n in outputs if n.startswith("adj_") and n[4:] == param]
    if len(candidates) != 1:
        raise SystemExit(f"no adjoint output for parameter '{param}' in the reverse graph")
    return candidates[0]


def set_opset(model):
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(imp.version, OPSET)


class Emitter:
    """Appends optimizer nodes with unique names and typed constants."""

    def __init__(self, graph, dtype):
        self.graph, self.dtype, self.count = graph, dtype, 0

    def op(self, op_type, inputs, name=None, **attrs):
        self.count += 1
        out = name or f"opt/{op_type.lower()}_{self.count}"
        self.graph.node.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, value):
        self.count += 1
        name = f"opt/const_{self.count}"
        self.graph.initializer.append(numpy_helper.from_array(np.array(value, NUMPY[self.dtype]), name))
        return name

    def axpy(self, a, x, y):
        """a*x + y with `a` a Python number."""
        return self.op("Add", [self.op("Mul", [self.const(a), x]), y])


def add_update(model, optimizer, hyper, trainable, masks):
    """Append the optimizer update: inputs lr, step and slots; outputs `updated:*`."""
    graph = model.graph
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    grads = {o.name[len(GRAD_PREFIX):]: o.name for o in graph.output if o.name.startswith(GRAD_PREFIX)}
    del graph.output[2:]  # keep loss and correct; gradients become internal
    _append_update(graph, elem_type(model), optimizer, hyper, {n: (grads[n], shapes[n]) for n in trainable})


def _append_update(graph, dtype, optimizer, hyper, grads):
    """Inputs lr, step and the slots of every parameter in `grads` ({name: (gradient tensor,
    shape)}); outputs `updated:<param>` and `updated:<slot>`."""
    e = Emitter(graph, dtype)
    graph.input.append(helper.make_tensor_value_info(LR, dtype, []))
    graph.input.append(helper.make_tensor_value_info(STEP, dtype, []))
    slots, _ = OPTIMIZERS[optimizer]
    for name, (grad, shape) in grads.items():
        for slot in slots:
            graph.input.append(helper.make_tensor_value_info(slot_name(slot, name), dtype, shape))
        new = UPDATE_RULES[optimizer](e, name, grad, hyper)
        for target, value in new.items():
            out = UPDATED_PREFIX + target
            e.op("Identity", [value], name=out)
            graph.output.append(helper.make_tensor_value_info(out, dtype, shape))


def update_model(forward, trainable, optimizer, hyper):
    """The update alone (gradient accumulation): parameters, slots, summed gradients `acc:<p>`,
    lr and step in; `updated:*` out."""
    dtype = elem_type(forward)
    init = {t.name: list(t.dims) for t in forward.graph.initializer}
    graph = helper.make_graph([], "update", [], [])
    for name in trainable:
        graph.input.append(helper.make_tensor_value_info(name, dtype, init[name]))
    for name in trainable:
        graph.input.append(helper.make_tensor_value_info(ACC_PREFIX + name, dtype, init[name]))
    _append_update(graph, dtype, optimizer, hyper, {n: (ACC_PREFIX + n, init[n]) for n in trainable})
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = forward.ir_version
    return model


def accumulate_model(forward, trainable, micro):
    """The gradient graph at batch `micro` that sums: accumulated:<p> = (acc_first ? 0 :
    acc:<p>) + acc_scale * grad:<p>.

    `acc_scale` is the loss's adjoint seed, so reverse mode emits the scaled gradients at no
    cost; one If picks the start (the gradients as they are) or the sums (one Add each), so
    whatever the uninitialised sum buffers hold (NaN too) never leaks in, and no Where
    broadcasts a scalar condition over every gradient (it cost 10% of an InceptionV3 step)."""
    model, masks, _ = gradient_model(forward, trainable, micro, seed_input=ACC_SCALE)
    graph = model.graph
    dtype = elem_type(model)
    graph.input.append(helper.make_tensor_value_info(ACC_FIRST, TensorProto.BOOL, []))
    outputs = list(graph.output)
    del graph.output[2:]
    start, add = [], []
    results = []
    for out in outputs[2:]:
        name = out.name[len(GRAD_PREFIX):]
        shape = [d.dim_value for d in out.type.tensor_type.shape.dim]
        acc = ACC_PREFIX + name
        graph.input.append(helper.make_tensor_value_info(acc, dtype, shape))
        start.append(helper.make_node("Identity", [out.name], [f"acc/start:{name}"]))
        add.append(helper.make_node("Add", [acc, out.name], [f"acc/sum:{name}"]))
        results.append(helper.make_tensor_value_info(ACCUMULATED_PREFIX + name, dtype, shape))

    def branch(label, nodes):
        return helper.make_graph(nodes, label, [], [helper.make_tensor_value_info(n.output[0], dtype, None) for n in nodes])

    graph.node.append(helper.make_node("If", [ACC_FIRST], [r.name for r in results], name="acc/if_first",
                                       then_branch=branch("start", start), else_branch=branch("add", add)))
    graph.output.extend(results)
    return model, masks


def _decayed(e, p, g, wd):
    return g if wd == 0 else e.axpy(wd, p, g)


def sgd_update(e, p, g, h):
    """v = mu*v + (g + wd*p); p -= lr*v."""
    v = slot_name("momentum", p)
    v_new = e.axpy(h["momentum"], v, _decayed(e, p, g, h["weight_decay"]))
    return {p: e.op("Sub", [p, e.op("Mul", [LR, v_new])]), v: v_new}


def _adam_moments(e, p, g, h):
    m, v = slot_name("m", p), slot_name("v", p)
    b1, b2 = h["beta1"], h["beta2"]
    m_new = e.axpy(b1, m, e.op("Mul", [e.const(1 - b1), g]))
    v_new = e.axpy(b2, v, e.op("Mul", [e.const(1 - b2), e.op("Mul", [g, g])]))
    # bias corrections 1 - beta^step, with step counted from 1
    c1 = e.op("Sub", [e.const(1.0), e.op("Pow", [e.const(b1), STEP])])
    c2 = e.op("Sub", [e.const(1.0), e.op("Pow", [e.const(b2), STEP])])
    denom = e.op("Add", [e.op("Sqrt", [e.op("Div", [v_new, c2])]), e.const(h["eps"])])
    direction = e.op("Div", [e.op("Div", [m_new, c1]), denom])
    return direction, {m: m_new, v: v_new}


def adam_update(e, p, g, h):
    """L2 weight decay added to the gradient (torch.optim.Adam)."""
    direction, slots = _adam_moments(e, p, _decayed(e, p, g, h["weight_decay"]), h)
    return {p: e.op("Sub", [p, e.op("Mul", [LR, direction])]), **slots}


def adamw_update(e, p, g, h):
    """Decoupled weight decay: p -= lr * (adam direction + wd * p) (torch.optim.AdamW)."""
    direction, slots = _adam_moments(e, p, g, h)
    step = e.axpy(h["weight_decay"], p, direction)
    return {p: e.op("Sub", [p, e.op("Mul", [LR, step])]), **slots}


def rmsprop_update(e, p, g, h):
    """s = rho*s + (1-rho)*g'^2; b = mu*b + g'/(sqrt(s)+eps); p -= lr*b, g' = g + wd*p
    (torch.optim.RMSprop; eps=1.0 and momentum 0.9 are the Inception training settings)."""
    s, b = slot_name("square", p), slot_name("momentum", p)
    g = _decayed(e, p, g, h["weight_decay"])
    s_new = e.axpy(h["rho"], s, e.op("Mul", [e.const(1 - h["rho"]), e.op("Mul", [g, g])]))
    scaled = e.op("Div", [g, e.op("Add", [e.op("Sqrt", [s_new]), e.const(h["eps"])])])
    b_new = e.axpy(h["momentum"], b, scaled)
    return {p: e.op("Sub", [p, e.op("Mul", [LR, b_new])]), s: s_new, b: b_new}


UPDATE_RULES = {"sgd": sgd_update, "adam": adam_update, "adamw": adamw_update, "rmsprop": rmsprop_update}


# --------------------------------------------------------------------------------------------
# Eval graph, checkpoint, manifest
# --------------------------------------------------------------------------------------------

def eval_model(forward, trainable, logits=LOGITS):
    """Forward only, dynamic batch, parameters as inputs, `logits` as the one output."""
    model = promote_params(forward, trainable, None)
    graph = model.graph
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(logits, elem_type(model), ["N", None]))
    prune_unused(model)
    return model


def write_checkpoint(path, tensors, *, artifact_sha256, seed, optimizer):
    """The checkpoint layout that src/train/checkpoint.rs reads and writes."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["format"] = CHECKPOINT_FORMAT
        f.attrs["format_version"] = np.int64(CHECKPOINT_VERSION)
        f.attrs["artifact_sha256"] = artifact_sha256
        f.attrs["optimizer"] = optimizer
        for key in ("step", "epoch", "seed"):
            f.attrs[key] = np.int64(seed if key == "seed" else 0)
        f.attrs["best_val_accuracy"] = np.float64(-1.0)
        f.attrs["created"] = datetime.now(timezone.utc).isoformat()
        f.attrs["tool_version"] = "retrain scripts/make_artifacts.py"
        group = f.create_group("tensors")
        for i, (name, value) in enumerate(tensors):
            # gzip: fresh optimizer slots are all zeros, and big artifacts travel; fletcher32:
            # a changed byte is an error when read, never a weight (as in retrain's own files)
            ds = group.create_dataset(f"{i:05d}", data=value, compression="gzip", compression_opts=1, fletcher32=True)
            ds.attrs["name"] = name


def read_checkpoint(path):
    """{tensor name: array} and the root attributes, for Python users and tests."""
    import h5py

    with h5py.File(path, "r") as f:
        tensors = {ds.attrs["name"]: ds[()] for ds in f["tensors"].values()}
        return tensors, dict(f.attrs)


def memory_estimate(gradient, params, slots, batch):
    """Bytes of the training state (parameters and slots, twice: read and write sets; plus two
    gradient sums when accumulating) and of the activations one image adds: every float
    tensor of the gradient graph whose first dimension is the batch, which is what reverse mode
    keeps or recomputes per image.  An upper bound: ONNX Runtime reuses buffers; the measured
    peaks are in docs/finetune.md."""
    inferred = shape_inference.infer_shapes(gradient)
    per_image = 0
    for v in inferred.graph.value_info:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        if dims and dims[0] == batch and all(dims):
            per_image += int(np.prod(dims[1:])) * 4
    values = sum(int(np.prod(v.shape)) for _, v in params)
    return {"state_bytes": values * 4 * (2 * (1 + slots) + 2), "activation_bytes_per_image": per_image}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image_layout(model):
    image = image_input(model)
    return {"input": image.name,
            "shape": [d.dim_value if d.HasField("dim_value") else None
                      for d in image.type.tensor_type.shape.dim]}


def generate(forward_path, out, *, batch, optimizer, trainable_patterns=None, hyper=None,
             seed=0, logits=LOGITS, fast=True, micro_batches=()):
    """Write the artifacts folder; returns the manifest."""
    forward = onnx.load(forward_path)
    if batch < 1:
        raise SystemExit("--batch must be at least 1")
    trainable = select_trainable(forward, trainable_patterns)
    defaults = dict(OPTIMIZERS[optimizer][1])
    unknown = set(hyper or {}) - set(defaults)
    if unknown:
        raise SystemExit(f"{optimizer} has no setting {', '.join(sorted(unknown))} (it has {', '.join(defaults)})")
    defaults.update(hyper or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    gradient, masks, classes = gradient_model(forward, trainable, batch, fast)
    tasks = tasks_of(forward) or []
    step = copy.deepcopy(gradient)
    add_update(step, optimizer, defaults, trainable, masks)
    evaluation = eval_model(forward, trainable, logits)
    files = {"forward": forward, "gradient": gradient, "train_step": step, "eval": evaluation}
    if micro_batches:
        files["update"] = update_model(forward, trainable, optimizer, defaults)
        for micro in micro_batches:
            files[f"accumulate_b{micro}"] = accumulate_model(forward, trainable, micro)[0]
    for name, model in files.items():
        if name != "forward":
            model.producer_name = "retrain scripts/make_artifacts.py"
        onnx.checker.check_model(model, full_check=(name != "gradient"))
        onnx.save(model, out / f"{name}.onnx")

    init = {t.name: numpy_helper.to_array(t) for t in forward.graph.initializer}
    params = [(n, init[n]) for n in trainable]
    slots = [(slot_name(s, n), np.zeros_like(v)) for n, v in params for s in OPTIMIZERS[optimizer][0]]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": "retrain scripts/make_artifacts.py",
        "source_model": str(forward_path),
        "source_sha256": sha256(forward_path),
        "files": {name: {"path": f"{name}.onnx", "sha256": sha256(out / f"{name}.onnx")} for name in files},
        "batch": batch,
        "classes": classes,
        "image": image_layout(forward),
        "description": desc.read(forward),
        "dtype": "float32" if elem_type(forward) == TensorProto.FLOAT else "float64",
        "inputs": {"labels": LABELS, "weights": WEIGHTS, "lr": LR, "step": STEP,
                   **({"targets": TARGETS} if any(t["kind"] == "landmarks" for t in tasks) else {})},
        "tasks": tasks,
        "outputs": {"loss": LOSS, "correct": CORRECT, "logits": logits},
        "dropout_masks": masks,
        "optimizer": {"name": optimizer, **defaults},
        "trainable": [{"name": n, "shape": list(v.shape)} for n, v in params],
        "frozen": [t.name for t in forward.graph.initializer if t.name not in set(trainable)],
        "state": [{"input": n, "output": UPDATED_PREFIX + n, "shape": list(v.shape),
                   "kind": "param" if i < len(params) else "slot"}
                  for i, (n, v) in enumerate(params + slots)],
        "micro_batches": sorted(micro_batches, reverse=True),
        "accumulation": {"first": ACC_FIRST, "scale": ACC_SCALE, "sum_prefix": ACC_PREFIX,
                         "output_prefix": ACCUMULATED_PREFIX},
        "memory": memory_estimate(gradient, params, len(OPTIMIZERS[optimizer][0]), batch),
        "backward_rules": "fast_rules" if fast else "onnx-ad",
        "init_seed": seed,
        "checkpoint": "init.h5",
    }
    text = json.dumps(manifest, indent=2) + "\n"
    (out / "manifest.json").write_text(text)
    artifact_sha256 = hashlib.sha256(text.encode()).hexdigest()
    write_checkpoint(out / "init.h5", params + slots, artifact_sha256=artifact_sha256, seed=seed,
                     optimizer=optimizer)
    return manifest, artifact_sha256


def parse_hyper(items):
    hyper = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"--set {item}: expected KEY=VALUE")
        hyper[key.replace("-", "_")] = float(value)
    return hyper


def parse_micro(text):
    sizes = sorted({int(m) for m in text.split(",") if m.strip()}, reverse=True)
    if any(m < 1 for m in sizes):
        raise SystemExit(f"--micro-batches {text}: sizes must be at least 1")
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("forward", type=Path, help="forward ONNX graph with a `logits` output")
    parser.add_argument("--out", type=Path, required=True, help="artifacts folder")
    parser.add_argument("--batch", type=int, default=64, help="fixed batch of the training graphs")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="optimizer setting, e.g. weight_decay=4e-5, momentum=0.9")
    parser.add_argument("--trainable", action="append", metavar="GLOB",
                        help="train only parameters matching GLOB (repeatable; default: all)")
    parser.add_argument("--logits", default=LOGITS, help="the class-score tensor")
    parser.add_argument("--seed", type=int, default=0, help="recorded as the init seed")
    parser.add_argument("--micro-batches", default="", metavar="M1,M2,...",
                        help="also write accumulate_bM.onnx for each M and update.onnx (gradient accumulation)")
    parser.add_argument("--onnx-ad-rules", action="store_true",
                        help="onnx-ad's own reverse rules instead of fast_rules.py's")
    args = parser.parse_args(argv)
    manifest, digest = generate(args.forward, args.out, batch=args.batch, optimizer=args.optimizer,
                                trainable_patterns=args.trainable, hyper=parse_hyper(args.set),
                                seed=args.seed, logits=args.logits, fast=not args.onnx_ad_rules,
                                micro_batches=parse_micro(args.micro_batches))
    n_params = sum(int(np.prod(t["shape"])) for t in manifest["trainable"])
    nodes = len(onnx.load(args.out / "train_step.onnx").graph.node)
    print(f"wrote {args.out}: {len(manifest['trainable'])} trainable tensors ({n_params} values), "
          f"{manifest['optimizer']['name']}, batch {manifest['batch']}, train_step {nodes} nodes, "
          f"artifact sha256 {digest[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
