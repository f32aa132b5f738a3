#!/usr/bin/env python3
"""Which "unlike the training data" score separates unknown images best? Compares, on
features that `tl train --save-features` wrote (same images, same split as tl):

  msp      1 - the top softmax probability of a logistic-regression head (what a user has today)
  energy   -logsumexp(logits) of that head
  maha     smallest Mahalanobis distance to a class mean (shared covariance, shrunk)
  knnK     1 - mean cosine similarity of the K nearest training features (L2-normalised)
  knn1@M   k=1 with only M reference rows kept (a stored-size budget)

Known = the validation rows of KNOWN; unknown = every row (train and val) of each UNKNOWN
file. Prints the AUROC and, at the threshold that accepts ACCEPT of the validation rows, the
share of unknown rows rejected.

    unknown_methods.py KNOWN.safetensors UNKNOWN.safetensors [...] [--accept 0.95] [--json]
"""
import argparse
import json
import sys

import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_score(refs, x, k):
    sims = unit(x) @ unit(refs).T
    top = -np.sort(-sims, axis=1)[:, :k]
    return 1.0 - top.mean(axis=1)


def mahalanobis_score(xtr, ytr, x):
    classes = np.unique(ytr)
    means = np.stack([xtr[ytr == c].mean(0) for c in classes])
    centred = xtr - means[np.searchsorted(classes, ytr)]
    cov = centred.T @ centred / len(xtr)
    cov += 1e-3 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    prec = np.linalg.inv(cov)
    d = np.stack([np.einsum("nd,de,ne->n", x - m, prec, x - m) for m in means], 1)
    return d.min(1)


def evaluate(name, s_known, s_unknown, accept):
    labels = np.r_[np.zeros(len(s_known)), np.ones(len(s_unknown))]
    auroc = roc_auc_score(labels, np.r_[s_known, s_unknown])
    srt = np.sort(s_known)
    thr = srt[min(len(srt) - 1, int(np.ceil(accept * len(srt))) - 1)]
    return {"method": name, "auroc": float(auroc), "unknown_rejected": float((s_unknown > thr).mean()),
            "known_rejected": float((s_known > thr).mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("known")
    p.add_argument("unknown", nargs="+")
    p.add_argument("--accept", type=float, default=0.95)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    t = load_file(a.known)
    xtr, ytr, xva, yva = (t[k] for k in ("train_x", "train_y", "val_x", "val_y"))
    xun = np.concatenate([np.concatenate([u["train_x"], u["val_x"]]) for u in map(load_file, a.unknown)])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=5000).fit((xtr - mu) / sd, ytr)
    logits = lambda x: clf.decision_function((x - mu) / sd).reshape(len(x), -1)

    def msp(x):
        z = logits(x)
        if z.shape[1] == 1:
            z = np.c_[np.zeros(len(z)), z]
        e = np.exp(z - z.max(1, keepdims=True))
        return 1 - (e / e.sum(1, keepdims=True)).max(1)

    def energy(x):
        z = logits(x)
        if z.shape[1] == 1:
            z = np.c_[np.zeros(len(z)), z]
        m = z.max(1)
        return -(m + np.log(np.exp(z - m[:, None]).sum(1)))

    rng = np.random.default_rng(0)
    rows = [evaluate("msp", msp(xva), msp(xun), a.accept), evaluate("energy", energy(xva), energy(xun), a.accept),
            evaluate("maha", mahalanobis_score(xtr, ytr, xva), mahalanobis_score(xtr, ytr, xun), a.accept)]
    for k in (1, 5, 10, 50):
        rows.append(evaluate(f"knn{k}", knn_score(xtr, xva, k), knn_score(xtr, xun, k), a.accept))
    for m in (len(xtr) // 4, len(xtr) // 10):
        sub = xtr[rng.choice(len(xtr), m, replace=False)]
        rows.append(evaluate(f"knn1@{m}", knn_score(sub, xva, 1), knn_score(sub, xun, 1), a.accept))
    if a.json:
        print(json.dumps({"train": len(xtr), "val": len(xva), "unknown": len(xun), "accept": a.accept, "methods": rows}))
    else:
        print(f"{len(xtr)} train / {len(xva)} val known, {len(xun)} unknown; threshold accepts {a.accept:.0%} of val")
        print(f"{'method':<10} {'AUROC':>7} {'unknown rejected':>17} {'val rejected':>13}")
        for r in rows:
            print(f"{r['method']:<10} {r['auroc']:7.4f} {100 * r['unknown_rejected']:16.1f}% {100 * r['known_rejected']:12.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
