#!/usr/bin/env python3
"""Issue #24's figures (BENCHMARKS "Unknown images and calibration"), from ../shared photos:

1. cats_dogs, MobileNetV2, `--val-split 0.5 --seed 0`: ECE/NLL/Brier before and after the
   temperature; the unknown judge on ../shared/data/ood against the validation photos (AUROC,
   share of ood answered unknown, share of validation photos answered unknown, accuracy of
   the accepted ones); the score methods compared (scripts/bench/unknown_methods.py).
2. pets: 30 breeds trained (seeds 0-2), the 7 others (every 5th breed in name order, the
   first 35) as unknown images, at --accept 0.95 and 0.9.
3. Cost: the calibration step's time against the head's, and the judge's file size.

    bench_unknown.py [--tl target/release/tl] [--backbone mobilenet_v2] [--json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def run(tl, *args):
    r = subprocess.run([str(tl), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"tl {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r.stdout


def link_tree(dest: Path, folders):
    dest.mkdir(parents=True)
    for f in folders:
        (dest / f.name).symlink_to(f.resolve())


def cats_dogs(tl, backbone, tmp: Path) -> dict:
    data, ood = SHARED / "cats_dogs", SHARED / "ood"
    run_dir, feats = tmp / "cd", tmp / "cd.safetensors"
    run(tl, "train", "--backbone", backbone, data, "--val-split", "0.5", "--seed", "0",
        "--out", run_dir, "--save-features", feats, "-q")
    report = json.loads((run_dir / "report.json").read_text())
    ev = json.loads(run(tl, "eval", run_dir, data, "--split", "val", "--unknown-dir", ood, "--json"))
    # ood features through the same pipeline, for the method comparison: a two-folder layout of links.
    ood_ds = tmp / "ood_ds"
    for i, f in enumerate(sorted(ood.iterdir())):
        d = ood_ds / ("a" if i % 2 == 0 else "b")
        d.mkdir(parents=True, exist_ok=True)
        (d / f.name).symlink_to(f.resolve())
    ood_feats = tmp / "ood.safetensors"
    run(tl, "train", "--backbone", backbone, ood_ds, "--val-split", "0.5", "--out", tmp / "ood_run",
        "--save-features", ood_feats, "-q")
    methods = json.loads(subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "unknown_methods.py"), feats, ood_feats, "--json"],
        capture_output=True, text=True, check=True).stdout)
    u = ev["unknown"]
    return {
        "val_accuracy": ev["report"]["accuracy"],
        "accepted_accuracy": u["accepted_accuracy"],
        "val_rejected": u["rejected_share"],
        "ood_rejected": u["other"]["rejected_share"],
        "ood_images": u["other"]["images"],
        "auroc": u["other"]["auroc"],
        "threshold": u["threshold"],
        "calibration": {k: {m: ev["calibration"][k][m] for m in ("ece", "nll", "brier")} for k in ("before", "after")},
        "temperature": ev["calibration"]["temperature"],
        "head_seconds": report["timing_seconds"]["train"],
        "calibrate_seconds": report["timing_seconds"]["calibrate"],
        "judge_bytes": (run_dir / "unknown.safetensors").stat().st_size,
        "methods": methods["methods"],
    }


def pets(tl, backbone, tmp: Path) -> list:
    breeds = sorted(p for p in (SHARED / "pets").iterdir() if p.is_dir())
    left_out = [b for i, b in enumerate(breeds) if i % 5 == 0 and i < 35]
    known = [b for b in breeds if b not in left_out]
    link_tree(tmp / "pets_known", known)
    link_tree(tmp / "pets_unknown", left_out)
    rows = []
    for seed in (0, 1, 2):
        r = tmp / f"pets{seed}"
        run(tl, "train", "--backbone", backbone, tmp / "pets_known", "--seed", seed, "--out", r, "-q")
        for accept in ("0.95", "0.9"):
            ev = json.loads(run(tl, "eval", r, tmp / "pets_known", "--split", "val", "--accept", accept,
                                "--unknown-dir", tmp / "pets_unknown", "--json"))
            u = ev["unknown"]
            rows.append({"seed": seed, "accept": float(accept), "auroc": u["other"]["auroc"],
                         "left_out_rejected": u["other"]["rejected_share"], "known_rejected": u["rejected_share"],
                         "val_images": ev["report"]["images"], "left_out_images": u["other"]["images"],
                         "ece_before": ev["calibration"]["before"]["ece"], "ece_after": ev["calibration"]["after"]["ece"],
                         "nll_before": ev["calibration"]["before"]["nll"], "nll_after": ev["calibration"]["after"]["nll"]})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tl", default=str(ROOT / "target" / "release" / "tl"))
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if not (SHARED / "cats_dogs").is_dir() or not (SHARED / "ood").is_dir():
        print(f"SKIPPED: {SHARED}/cats_dogs and {SHARED}/ood are needed")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("TL_CACHE_DIR", str(tmp / "cache"))
        cd = cats_dogs(a.tl, a.backbone, tmp)
        pe = pets(a.tl, a.backbone, tmp) if (SHARED / "pets").is_dir() else []
    if a.json:
        print(json.dumps({"cats_dogs": cd, "pets": pe}, indent=1))
        return 0
    c = cd["calibration"]
    print(f"cats_dogs ({a.backbone}, val 0.5, seed 0): val accuracy {100 * cd['val_accuracy']:.2f}%, "
          f"accepted {100 * cd['accepted_accuracy']:.2f}%")
    print(f"  temperature {cd['temperature']:.3f}: ECE {c['before']['ece']:.4f} -> {c['after']['ece']:.4f}, "
          f"NLL {c['before']['nll']:.4f} -> {c['after']['nll']:.4f}, Brier {c['before']['brier']:.4f} -> {c['after']['brier']:.4f}")
    print(f"  unknown: AUROC {cd['auroc']:.4f}; ood answered unknown {100 * cd['ood_rejected']:.1f}% of {cd['ood_images']}; "
          f"validation answered unknown {100 * cd['val_rejected']:.1f}% (threshold {cd['threshold']:.4f})")
    print(f"  cost: calibration {cd['calibrate_seconds']:.3f}s vs head {cd['head_seconds']:.3f}s; "
          f"unknown.safetensors {cd['judge_bytes'] / 1e6:.2f} MB")
    print("  methods (validation vs ood, threshold at 95% of validation):")
    for m in cd["methods"]:
        print(f"    {m['method']:<9} AUROC {m['auroc']:.4f}  ood rejected {100 * m['unknown_rejected']:5.1f}%")
    for r in pe:
        print(f"pets seed {r['seed']} accept {r['accept']}: left-out breeds unknown {100 * r['left_out_rejected']:.1f}% "
              f"of {r['left_out_images']}, known rejected {100 * r['known_rejected']:.1f}% of {r['val_images']}, "
              f"AUROC {r['auroc']:.3f}; ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}, NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
