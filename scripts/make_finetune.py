#!/usr/bin/env python3
"""Fine-tuning artifacts for a pretrained network: a new N-way head, two training phases.

The study's second approach (TF-slim's InceptionV3 fine-tuning): replace the classifier by a
new `Logits` layer, train (1) only the new layer, then (2) every layer.  From a forward graph
with a `bottleneck` output (retrain's converted InceptionV3 has one) this writes:

  DIR/model.onnx      the network cut at the bottleneck, dropout (inference form) and a new
                      `Logits` Gemm [features, N] (truncated normal, std 0.001, seeded; bias 0)
                      -> `logits`, `probabilities`; `bottleneck` stays an output
  DIR/head.onnx       the new layer alone: `bottleneck` [N, features] -> dropout -> `Logits`
                      -> `logits`, the same initial values
  DIR/phase1/         training artifacts of head.onnx (make_artifacts.py): phase 1 trains on
                      cached bottlenecks, so the frozen backbone costs nothing per step
  DIR/phase2/         training artifacts of model.onnx, every parameter trainable, with one
                      accumulate_bM.onnx per micro-batch M and update.onnx (gradient
                      accumulation, so a batch that does not fit runs as M-sized pieces)
  DIR/finetune.json   what ties them together (the source model's sha256, the class count, the
                      head's parameter names, both artifact hashes); its sha256 identifies the set

The source's batch normalisation is already folded into its convolutions (inference form:
frozen statistics; the folded kernel and bias carry gamma and beta, and they train), which keeps
reverse mode exact.  The nsfwjs InceptionV3 has no auxiliary head, so none is replaced; a
source graph with an `aux_logits` output is refused rather than fine-tuned half-way.

  make_finetune.py onnx/inception_v3.onnx --classes 2 --out artifacts/inception-finetune
"""

import argparse
import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import description as desc  # noqa: E402
import make_artifacts as ma  # noqa: E402

HEAD = "Logits"
KERNEL, BIAS = f"{HEAD}/kernel", f"{HEAD}/bias"
DEFAULT_MICRO = "100,50,25,20,10,8,5,4,2,1"


def truncated_normal(rng, shape, std):
    """TensorFlow's truncated_normal: redraw values beyond two standard deviations."""
    values = rng.standard_normal(shape)
    while np.any(bad := np.abs(values) > 2):
        values[bad] = rng.standard_normal(int(bad.sum()))
    return (values * std).astype(np.float32)


def head_nodes(features, classes, dropout, seed):
    """Dropout, the new Logits Gemm and Softmax on top of `features`."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(truncated_normal(rng, (features, classes), 0.001), KERNEL),
             numpy_helper.from_array(np.zeros(classes, np.float32), BIAS),
             numpy_helper.from_array(np.array(dropout, np.float32), f"{HEAD}/dropout_ratio")]
    nodes = [helper.make_node("Dropout", ["bottleneck", f"{HEAD}/dropout_ratio"], [f"{HEAD}/dropped"],
                              name=f"{HEAD}/dropout"),
             helper.make_node("Gemm", [f"{HEAD}/dropped", KERNEL, BIAS], ["logits"], name=HEAD),
             helper.make_node("Softmax", ["logits"], ["probabilities"], name=f"{HEAD}/softmax", axis=-1)]
    return nodes, inits


def cut_at(source, tensor):
    """The nodes and initializers `tensor` (an output of `source`) depends on."""
    model = copy.deepcopy(source)
    kept = [o for o in model.graph.output if o.name == tensor]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    ma.prune_unused(model)
    return list(model.graph.node), list(model.graph.initializer)


def features_of(source, bottleneck):
    for out in source.graph.output:
        if out.name == bottleneck:
            return out.type.tensor_type.shape.dim[-1].dim_value
    raise SystemExit(f"the source graph has no output '{bottleneck}' (outputs: "
                     f"{', '.join(o.name for o in source.graph.output)})")


def cut_below(model, layer):
    """The tensor every path from the image to `layer` passes through last: the input of the
    block `layer` belongs to (for InceptionV3's `mixed9`, the block output `mixed8`; for a
    chain of layers, the layer's own input).  What is computed before it stays frozen."""
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes = [n for n in model.graph.node if n.name == layer or layer in n.output]
    if not nodes:
        raise SystemExit(f"--train-from {layer}: the graph has no node or tensor of that name")
    target = nodes[0].output[0]
    image = model.graph.input[0].name
    inits = {t.name for t in model.graph.initializer}

    def ancestors(tensor):
        seen, stack = set(), [tensor]
        while stack:
            t = stack.pop()
            if t in seen or t in inits or t not in producer:
                continue
            seen.add(t)
            stack.extend(i for i in producer[t].input if i)
        return seen

    def reaches_without(blocked):
        """Whether the image still reaches `target` when `blocked` is taken out."""
        reached = {image}
        for n in model.graph.node:  # topological order
            if any(i in reached and i != blocked for i in n.input):
                reached.update(o for o in n.output if o != blocked)
        return target in reached

    order = {o: k for k, n in enumerate(model.graph.node) for o in n.output}
    candidates = sorted(ancestors(target) - {target}, key=order.get, reverse=True)
    for tensor in candidates:
        if not reaches_without(tensor):
            return tensor
    return image


def split_at(model, cut, shapes):
    """(below, above): the graph up to tensor `cut` (its one output, named `cut`; the source's
    description kept, so `retrain extract` caches it like a bottleneck), and the
    graph from `cut` on (its one input, [N, *shape of cut]) to `logits`."""
    below = copy.deepcopy(model)
    del below.graph.output[:]
    below.graph.output.append(helper.make_tensor_value_info(cut, TensorProto.FLOAT, ["N", *shapes[cut][1:]]))
    ma.prune_unused(below)
    above = copy.deepcopy(model)
    graph = above.graph
    needed, kept = {"logits"}, []
    for node in reversed(list(graph.node)):
        if needed & set(node.output):
            kept.append(node)
            needed.update(i for i in node.input if i != cut)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(cut, TensorProto.FLOAT, ["N", *shapes[cut][1:]]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", shapes["logits"][-1]]))
    del above.metadata_props[:]  # its input is no image: nothing may read it as one
    return below, above


def write_partial(out, model, layer, batch, hyper, seed):
    """phase2-from-LAYER/: below.onnx (frozen, cached once per image by retrain) and the
    training artifacts of the graph above the cut (its forward.onnx), every parameter there
    trainable."""
    cut = cut_below(model, layer)
    folder = out / f"phase2-from-{layer}"
    shutil.rmtree(folder, ignore_errors=True)  # no file of another cut stays beside these
    folder.mkdir(parents=True)
    shapes = ma.static_shapes(ma.promote_params(model, [], 1))
    below, above = split_at(model, cut, shapes)
    onnx.save(below, folder / "below.onnx")
    # the graph above the cut is the artifacts' forward graph (generate() writes it back there)
    onnx.save(above, folder / "forward.onnx")
    _, digest = ma.generate(folder / "forward.onnx", folder, batch=batch, optimizer="rmsprop", hyper=hyper,
                            seed=seed, micro_batches=[batch])
    return {"dir": folder.name, "artifact_sha256": digest, "cut": cut, "below": "below.onnx",
            "below_sha256": ma.sha256(folder / "below.onnx")}


def description(source, labels, note):
    """The source's description with the new classifier's labels, the bottleneck and a note."""
    return {**desc.read(source), "labels": desc.labels_text(labels), "bottleneck": "bottleneck", "source": note}


def finetune_model(source, classes, labels, dropout, seed, bottleneck):
    features = features_of(source, bottleneck)
    body, inits = cut_at(source, bottleneck)
    if bottleneck != "bottleneck":
        body.append(helper.make_node("Identity", [bottleneck], ["bottleneck"], name="bottleneck"))
    nodes, head_inits = head_nodes(features, classes, dropout, seed)
    graph = helper.make_graph(
        body + nodes, "finetune", [copy.deepcopy(source.graph.input[0])],
        [helper.make_tensor_value_info("bottleneck", TensorProto.FLOAT, ["N", features]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        inits + head_inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ma.OPSET)])
    model.ir_version = source.ir_version
    digest = hashlib.sha256(source.SerializeToString()).hexdigest()[:12]
    note = f"fine-tuning graph of {source.graph.name or 'a model'} (sha256 of the graph {digest}), new {classes}-way Logits"
    desc.write(model, description(source, labels, note))
    return model, features


def head_model(features, classes, dropout, seed, ir_version):
    nodes, inits = head_nodes(features, classes, dropout, seed)
    graph = helper.make_graph(
        nodes, "finetune_head",
        [helper.make_tensor_value_info("bottleneck", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ma.OPSET)])
    model.ir_version = ir_version  # what the source's ONNX Runtime reads, not this onnx's newest
    return model


def generate(source_path, out, *, classes, labels=None, batch=100, micro_batches=None, seed=0,
             dropout=0.2, bottleneck="bottleneck", weight_decay=4e-5, train_from=()):
    source = onnx.load(source_path)
    if any(o.name.startswith("aux") for o in source.graph.output):
        raise SystemExit("the source has an auxiliary head; replacing it is not implemented")
    labels = labels or [f"class_{i}" for i in range(classes)]
    if len(labels) != classes:
        raise SystemExit(f"--labels names {len(labels)} classes, --classes says {classes}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, features = finetune_model(source, classes, labels, dropout, seed, bottleneck)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out / "model.onnx")
    onnx.save(head_model(features, classes, dropout, seed, source.ir_version), out / "head.onnx")
    hyper = {"weight_decay": weight_decay}
    _, phase1 = ma.generate(out / "head.onnx", out / "phase1", batch=batch, optimizer="rmsprop",
                            hyper=hyper, seed=seed)
    _, phase2 = ma.generate(out / "model.onnx", out / "phase2", batch=batch, optimizer="rmsprop",
                            hyper=hyper, seed=seed, micro_batches=micro_batches or [batch])
    partial = {layer: write_partial(out, model, layer, batch, hyper, seed) for layer in train_from}
    description = {
        "format": "retrain-finetune-artifacts",
        "format_version": 1,
        "source_model": str(source_path),
        "source_sha256": ma.sha256(source_path),
        "classes": classes,
        "labels": labels,
        "features": features,
        "bottleneck": bottleneck,
        "head_params": [KERNEL, BIAS],
        "dropout": dropout,
        "batch": batch,
        "phase1": {"dir": "phase1", "artifact_sha256": phase1},
        "phase2": {"dir": "phase2", "artifact_sha256": phase2},
        "phase2_from": partial,
        "seed": seed,
    }
    text = json.dumps(description, indent=2) + "\n"
    (out / "finetune.json").write_text(text)
    return description, hashlib.sha256(text.encode()).hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="pretrained forward graph with a bottleneck output")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--labels", help="comma-separated class names (default class_0, ...)")
    parser.add_argument("--batch", type=int, default=100, help="the batch of one optimizer step")
    parser.add_argument("--micro-batches", default=DEFAULT_MICRO,
                        help=f"micro-batch sizes to write graphs for (default {DEFAULT_MICRO})")
    parser.add_argument("--dropout", type=float, default=0.2, help="before Logits (TF-slim keeps 0.8)")
    parser.add_argument("--weight-decay", type=float, default=4e-5)
    parser.add_argument("--bottleneck", default="bottleneck")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-from", action="append", default=[], metavar="LAYER",
                        help="also write phase2-from-LAYER/: phase 2 trains LAYER's block and every layer "
                             "above it, the layers below stay frozen (repeatable; `mixed9` for "
                             "InceptionV3's top two blocks, Keras' fine-tuning recipe)")
    args = parser.parse_args(argv)
    micro = [m for m in ma.parse_micro(args.micro_batches) if m <= args.batch]
    description, digest = generate(
        args.source, args.out, classes=args.classes, labels=args.labels and args.labels.split(","),
        batch=args.batch, micro_batches=micro, seed=args.seed, dropout=args.dropout,
        bottleneck=args.bottleneck, weight_decay=args.weight_decay, train_from=args.train_from)
    print(f"wrote {args.out}: {description['classes']}-way head on {description['features']} features, "
          f"batch {args.batch}, micro-batches {','.join(map(str, micro))}, finetune sha256 {digest[:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
