#!/usr/bin/env python3
"""Accuracy of scikit-learn's L2-regularised logistic regression on the features `tl train
--save-features` wrote (same images, same split): the reference for tl's head.

    sklearn_baseline.py FEATURES.safetensors [--json]
"""
import argparse
import json
import sys

from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength (sklearn default 1.0)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    t = load_file(args.features)
    xtr, ytr, xva, yva = (t[k].numpy() for k in ("train_x", "train_y", "val_x", "val_y"))
    clf = LogisticRegression(C=args.C, max_iter=5000)
    clf.fit(xtr, ytr)
    acc = float((clf.predict(xva) == yva).mean())
    result = {"features": args.features, "train": len(ytr), "val": len(yva), "dim": int(xtr.shape[1]), "C": args.C, "val_accuracy": acc}
    print(json.dumps(result) if args.json else f"sklearn LogisticRegression(C={args.C}) on {len(ytr)} train / {len(yva)} val, dim {xtr.shape[1]}: val accuracy {100 * acc:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
