#!/usr/bin/env python3
"""Issue #13's optional point 5: does int8 static quantisation (ONNX Runtime's tools) pay on
this CPU? For each backbone export, quantise with `quantize_static` (QOperator and QDQ,
per-channel weights, MinMax calibration on 256 of the user's photos), then measure:

  speed     backbone only, batch 32, 2 threads: fp32 and each int8 model alternated over
            `--repeats` rounds, medians (MobileNetV2 real weights; ResNet50 random weights,
            speed only)
  accuracy  linear probe (scikit-learn logistic regression on standardised features) on
            cats_dogs, half for training, seeds 0-2, fp32 against int8 (MobileNetV2 only: the
            only real weights here); the point's bar is 0.5 points

Preprocessing is torchvision's eval transform. Needs ../shared/data/cats_dogs (skips, saying
so, without it) and the exports made by scripts/bench/run.sh onnx (out/bench-onnx/backbones).
Results: out/bench-int8/results.json.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "cats_dogs"
BB = ROOT / "out" / "bench-onnx" / "backbones"
OUT = ROOT / "out" / "bench-int8"


def log(*a):
    print(*a, flush=True)


def load_images() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    import torchvision.transforms as T
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    files, labels = [], []
    for i, cls in enumerate(sorted(p for p in DATA.iterdir() if p.is_dir())):
        for f in sorted(cls.iterdir()):
            files.append(f)
            labels.append(i)
    x = np.stack([tf(Image.open(f).convert("RGB")).numpy() for f in files]).astype(np.float32)
    return x, np.array(labels)


class Calibration(CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        self.images, self.at = images, 0

    def get_next(self):
        if self.at >= len(self.images):
            return None
        batch = self.images[self.at:self.at + 32]
        self.at += 32
        return {"image": batch}


def quantise(arch: str, calib: np.ndarray) -> dict[str, Path]:
    pre = OUT / f"{arch}.pre.onnx"
    quant_pre_process(str(BB / f"{arch}.features.onnx"), str(pre))
    out = {}
    for fmt in ("QOperator", "QDQ"):
        path = OUT / f"{arch}.int8-{fmt.lower()}.onnx"
        quantize_static(str(pre), str(path), Calibration(calib), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out[f"int8 {fmt}"] = path
    return out


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def rate(s: ort.InferenceSession, x: np.ndarray, batches: int) -> float:
    s.run(None, {"image": x})
    t = time.perf_counter()
    for _ in range(batches):
        s.run(None, {"image": x})
    return batches * len(x) / (time.perf_counter() - t)


def features(path: Path, x: np.ndarray) -> np.ndarray:
    s = session(path)
    return np.concatenate([s.run(None, {"image": x[i:i + 32]})[0] for i in range(0, len(x), 32)])


def probe(f: np.ndarray, y: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    order = np.random.default_rng(seed).permutation(len(y))
    train, val = order[:len(y) // 2], order[len(y) // 2:]
    mean, std = f[train].mean(0), f[train].std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000).fit((f[train] - mean) / std, y[train])
    return float(clf.score((f[val] - mean) / std, y[val]))


def main() -> int:
    if not DATA.is_dir():
        log(f"skipped: {DATA} not present")
        return 0
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    OUT.mkdir(parents=True, exist_ok=True)
    log("preprocessing the photos (torchvision) ...")
    x, y = load_images()
    calib = x[np.random.default_rng(0).permutation(len(x))[:256]]
    results = {}
    for arch, batches in (("mobilenet_v2", 5), ("resnet50", 2)):
        if not (BB / f"{arch}.features.onnx").is_file():
            log(f"{arch}: skipped, no export in {BB} (run scripts/bench/run.sh onnx backbone first)")
            continue
        t = time.time()
        models = {"fp32": BB / f"{arch}.features.onnx", **quantise(arch, calib)}
        log(f"{arch}: quantised in {time.time() - t:.0f} s")
        sessions = {k: session(p) for k, p in models.items()}
        runs = {k: [] for k in models}
        for r in range(repeats):
            for k, s in sessions.items():
                runs[k].append(rate(s, x[:32], batches))
            log(f"  {arch} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()) + " img/s")
        med = {k: statistics.median(v) for k, v in runs.items()}
        row = {"images_per_second": med, "over_fp32": {k: v / med["fp32"] for k, v in med.items()}, "runs": runs}
        if arch == "mobilenet_v2":
            feats = {k: features(p, x) for k, p in models.items()}
            row["linear_probe_accuracy"] = {k: [probe(f, y, s) for s in range(3)] for k, f in feats.items()}
            row["cosine_to_fp32_min"] = {
                k: float(((f * feats["fp32"]).sum(1) / np.linalg.norm(f, axis=1)
                          / np.linalg.norm(feats["fp32"], axis=1)).min()) for k, f in feats.items()}
        results[arch] = row
        log(f"{arch}: " + ", ".join(f"{k} {v:.1f} img/s ({row['over_fp32'][k]:.2f}x)" for k, v in med.items()))
        for k, accs in row.get("linear_probe_accuracy", {}).items():
            log(f"  linear probe {k}: " + ", ".join(f"{100 * a:.2f}%" for a in accs)
                + f" (cosine to fp32, worst image: {row['cosine_to_fp32_min'][k]:.3f})")
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
