#!/usr/bin/env python3
"""Where a training graph's time goes: ONNX Runtime's profiler, summed per op type.

  profile_step.py ARTIFACTS [--graph train_step|gradient|accumulate_b8|eval] [--runs 3]
                  [--threads 2] [--top 15] [--nodes 10]

Runs the graph on one random batch (parameters and slots from init.h5), once to warm up and
then --runs times with profiling, and prints the mean wall time per run, the share of each op
type in the profiled kernel time, and the slowest single nodes.  The eval graph is run at the
training batch, so its time is the forward that the training step's time compares with.
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the product scripts it builds on
import make_artifacts as ma  # noqa: E402

NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
         "tensor(bool)": np.bool_}


def feeds(session, manifest, tensors, batch):
    """Every input of `session`: state from the checkpoint, the rest drawn or fixed."""
    rng = np.random.default_rng(0)
    out = {}
    for i in session.get_inputs():
        dtype = NUMPY[i.type]
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        if i.name in tensors:
            out[i.name] = tensors[i.name]
        elif i.name.startswith(ma.ACC_PREFIX):
            out[i.name] = np.zeros(shape, dtype)
        elif i.name == ma.LABELS:
            out[i.name] = (np.arange(shape[0]) % manifest["classes"]).astype(np.int64)
        elif i.name in (ma.WEIGHTS,):
            out[i.name] = np.ones(shape, dtype)
        elif i.name in (ma.LR, ma.STEP, ma.ACC_SCALE):
            out[i.name] = np.array(1e-4 if i.name == ma.LR else 1.0, dtype)
        elif i.name == ma.ACC_FIRST:
            out[i.name] = np.array(True)
        elif i.name.startswith(ma.MASK_PREFIX):
            out[i.name] = (rng.random(shape) > 0.5).astype(dtype) * 2
        else:
            out[i.name] = rng.uniform(-1, 1, shape).astype(dtype)
    return out


def profile(path, inputs, runs, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, inputs(session))  # warm-up
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "step")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    given = inputs(session)
    session.run(None, given)  # the profiled session's own warm-up is not counted
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, given)
    seconds = (time.perf_counter() - start) / runs
    events = json.loads(Path(session.end_profiling()).read_text())
    return seconds, [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def summary(events, runs, top, nodes):
    by_type, by_node = collections.Counter(), collections.Counter()
    for e in events:
        by_type[e["args"]["op_name"]] += e["dur"]
        by_node[(e["args"]["op_name"], e["name"][:-len("_kernel_time")])] += e["dur"]
    # the first profiled run (the warm-up) is part of the events: scale to one run
    total = sum(by_type.values())
    lines = [f"  {op:22} {100 * us / total:5.1f}%  {us / (runs + 1) / 1e3:9.1f} ms" for op, us in by_type.most_common(top)]
    lines.append("  slowest nodes:")
    lines += [f"  {op:22} {us / (runs + 1) / 1e3:9.1f} ms  {name}" for (op, name), us in by_node.most_common(nodes)]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--graph", default="train_step")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--batch", type=int, help="batch of the eval graph (default: the training batch)")
    args = parser.parse_args(argv)
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    tensors, _ = ma.read_checkpoint(args.artifacts / manifest["checkpoint"])
    batch = int(args.graph.split("_b")[1]) if args.graph.startswith("accumulate_b") else manifest["batch"]
    if args.graph == "eval" and args.batch:
        batch = args.batch
    seconds, events = profile(args.artifacts / f"{args.graph}.onnx",
                              lambda s: feeds(s, manifest, tensors, batch), args.runs, args.threads)
    print(f"{args.graph} at batch {batch}: {seconds:.3f} s per run ({batch / seconds:.1f} images/s), "
          f"{args.threads} threads")
    print(summary(events, args.runs, args.top, args.nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
