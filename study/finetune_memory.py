#!/usr/bin/env python3
"""Peak memory and time of one phase-2 micro-batch step, by micro-batch size.

Runs accumulate_bM.onnx (forward + backward + gradient sum) of a fine-tuning artifacts folder,
each size in a fresh process on ONNX Runtime's CPU provider (the library retrain loads), and
reports the process's peak resident memory (ru_maxrss) after two runs, against the manifest's
estimate (scripts/make_artifacts.py: state + micro x counted activation bytes).

  finetune_memory.py artifacts/inception-finetune/phase2 [--sizes 1,2,4,8]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def one(folder, micro):
    """Child process: run the micro-batch graph twice, print seconds and peak RSS."""
    import onnxruntime as ort
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the product scripts it builds on
    import make_artifacts as ma

    manifest = json.loads((folder / "manifest.json").read_text())
    params, _ = ma.read_checkpoint(folder / "init.h5")
    session = ort.InferenceSession(str(folder / f"accumulate_b{micro}.onnx"), providers=["CPUExecutionProvider"])
    shape = [micro] + manifest["image"]["shape"][1:]
    rng = np.random.default_rng(0)
    feeds = {manifest["image"]["input"]: rng.random(shape, np.float32), "labels": np.zeros(micro, np.int64),
             "weights": np.ones(micro, np.float32), "acc_first": np.array(True), "acc_scale": np.array(1.0, np.float32)}
    for m in manifest["dropout_masks"]:
        feeds[m["input"]] = np.ones([micro] + m["shape"][1:], np.float32)
    for t in manifest["trainable"]:
        feeds[t["name"]] = params[t["name"]]
        feeds[ma.ACC_PREFIX + t["name"]] = np.zeros(t["shape"], np.float32)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        session.run(["loss"], feeds)
        times.append(time.perf_counter() - start)
    print(json.dumps({"micro": micro, "seconds": min(times), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        one(args.folder, args.child)
        return 0
    manifest = json.loads((args.folder / "manifest.json").read_text())
    memory = manifest["memory"]
    print("| micro-batch | step s | s/image | peak RSS GiB | counted estimate GiB |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for micro in [int(m) for m in args.sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, str(args.folder), "--child", str(micro)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        estimate = memory["state_bytes"] + micro * memory["activation_bytes_per_image"]
        print(f"| {micro} | {r['seconds']:.2f} | {r['seconds'] / micro:.2f} | {r['peak_rss'] / 2**30:.2f} | {estimate / 2**30:.2f} |", flush=True)
    if len(rows) > 1:
        slope = (rows[-1]["peak_rss"] - rows[0]["peak_rss"]) / (rows[-1]["micro"] - rows[0]["micro"])
        print(f"peak grows by {slope / 2**30:.3f} GiB per image of the micro-batch "
              f"({slope / memory['activation_bytes_per_image']:.3f} of the counted activation bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
