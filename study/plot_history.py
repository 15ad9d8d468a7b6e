#!/usr/bin/env python3
"""Learning curves from a `retrain train` history.csv: loss and accuracy per epoch, as PNG.

  plot_history.py RUN/history.csv OUT.png [--title TEXT] [--test-accuracy A]
"""
import argparse
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("history")
    parser.add_argument("png")
    parser.add_argument("--title", default="")
    parser.add_argument("--test-accuracy", type=float, help="drawn as a horizontal line")
    args = parser.parse_args(argv)
    with open(args.history) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{args.history} has no epochs")
    epoch = [float(r["epoch"]) for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train", "training"), ("val", "validation (20% hold-out)")):
        loss_ax.plot(epoch, [float(r[f"{key}_loss"]) for r in rows], label=label)
        acc_ax.plot(epoch, [float(r[f"{key}_accuracy"]) for r in rows], label=label)
    if args.test_accuracy is not None:
        acc_ax.axhline(args.test_accuracy, color="gray", linestyle="--", label=f"test (best epoch) {args.test_accuracy:.3f}")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
