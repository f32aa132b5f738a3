"""`tl tune` against `tl train`'s defaults on held-out images (issue #29's bars).

- cats_dogs, `--val-split 0.5`: `tl tune --budget 10m` (views and fine-tuning in the space) with
  a cold feature cache (wall time measured), then `tl train` with the defaults; both report on the
  same 650 validation photos, which the search never sees.
- pets, seeds 0-2: per breed 3 photos held out (111 test photos, the test/ side), 7 for training;
  `tl tune` and `tl train` each, accuracy on the test photos.
- imbalanced pets (scripts/bench/balance.py's layout: 5 breeds cut to 2 training photos), seeds
  0-2: the same, plus recall on the 40 photos of the cut breeds not trained on.

    scripts/bench/run.sh tune [--seeds 0 1 2] [--budget 10m] [--only cats_dogs pets imbalanced]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
import balance  # noqa: E402


def pets_layout(src: Path, dst: Path, seed: int, test: int = 3) -> None:
    rng = random.Random(seed)
    if dst.exists():
        shutil.rmtree(dst)
    for b in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = sorted(p for p in (src / b).iterdir() if p.is_file())
        rng.shuffle(files)
        for side, chosen in (("test", files[:test]), ("train", files[test:])):
            (dst / side / b).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (dst / side / b / f.name).symlink_to(f.resolve())


def train(tl, data, out, extra=(), env=None):
    t = time.monotonic()
    subprocess.run([tl, "train", "--backbone", "mobilenet_v2", str(data), "--out", str(out),
                    "--force", "-q", *extra], check=True, stdout=subprocess.DEVNULL, env=env)
    return json.loads((out / "report.json").read_text()), time.monotonic() - t


def tune(tl, data, out, budget, extra=(), env=None):
    t = time.monotonic()
    subprocess.run([tl, "tune", "--backbone", "mobilenet_v2", str(data), "--out", str(out),
                    "--force", "-q", "--budget", budget, *extra], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    return json.loads((out / "report.json").read_text()), time.monotonic() - t


def chosen(report):
    t = report["tuning"]
    c = t["trials"][t["chosen"]]
    return c["trial"], sum(c["scores"]) / len(c["scores"])


def flags(trial):
    out = []
    if trial["l2_scale"] != 1.0:
        out.append(f"--l2 {trial['l2_scale']}x")
    if trial["lr"] != 0.01:
        out.append(f"--lr {trial['lr']}")
    if trial["label_smoothing"]:
        out.append(f"--label-smoothing {trial['label_smoothing']}")
    if trial["hidden"]:
        out.append(f"--hidden {trial['hidden']}")
    out.append(f"--balance {trial['balance']}")
    if trial["views"] > 1:
        out.append(f"--views {trial['views']}")
    if trial["finetune"]:
        out.append("--finetune 1")
    return " ".join(out)


def row(name, seed, default, tuned, secs, extra=""):
    trial, cv = chosen(tuned)
    d, t = default["validation"]["accuracy"], tuned["validation"]["accuracy"]
    r = {"data": name, "seed": seed, "default": d, "tuned": t, "tune_seconds": secs,
         "cv": cv, "chosen": flags(trial), "trials": len(tuned["tuning"]["trials"]),
         "notes": tuned["tuning"]["notes"]}
    print(json.dumps(r), flush=True)
    print(f"{name:<11} seed {seed}: default {100 * d:.2f}%  tuned {100 * t:.2f}%  (tune {secs:.0f} s, "
          f"{r['trials']} trials, CV {100 * cv:.2f}%: {r['chosen']}){extra}", flush=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tl", default=str(ROOT / "target/release/tl"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--only", nargs="+", default=["cats_dogs", "pets", "imbalanced"])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared/data"))
    ap.add_argument("--out", default=str(ROOT / "out/bench-tune"))
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    if not (shared / "cats_dogs").is_dir():
        print(f"bench tune: {shared} not present, skipped")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    if "cats_dogs" in args.only:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TL_CACHE_DIR=cache)
            data = shared / "cats_dogs"
            split = ["--val-split", "0.5"]
            tuned, secs = tune(args.tl, data, out / "cd-tuned", args.budget, split, env)
            default, _ = train(args.tl, data, out / "cd-default", split, env)
            rows.append(row("cats_dogs", 0, default, tuned, secs, " [cold cache]"))
    if "pets" in args.only:
        for seed in args.seeds:
            data = out / f"pets-{seed}"
            pets_layout(shared / "pets", data, seed)
            tuned, secs = tune(args.tl, data, out / f"pets-{seed}-tuned", args.budget)
            default, _ = train(args.tl, data, out / f"pets-{seed}-default")
            rows.append(row("pets", seed, default, tuned, secs))
    if "imbalanced" in args.only:
        for seed in args.seeds:
            data = out / f"rare-{seed}"
            balance.layout(shared / "pets", data, seed)
            tuned, secs = tune(args.tl, data, out / f"rare-{seed}-tuned", args.budget)
            default, _ = train(args.tl, data, out / f"rare-{seed}-default")
            rare = {}
            for name in ("default", "tuned"):
                r = subprocess.run([args.tl, "eval", str(out / f"rare-{seed}-{name}"), str(data / "rare"),
                                    "--json"], check=True, capture_output=True, text=True).stdout
                rare[name] = json.loads(r)["report"]["accuracy"]
            r = row("imbalanced", seed, default, tuned, secs,
                    f"  rare recall default {100 * rare['default']:.1f}% tuned {100 * rare['tuned']:.1f}%")
            r["rare_default"], r["rare_tuned"] = rare["default"], rare["tuned"]
            rows.append(r)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    for name in ("cats_dogs", "pets", "imbalanced"):
        rs = [r for r in rows if r["data"] == name]
        if rs:
            d = sum(r["default"] for r in rs) / len(rs)
            t = sum(r["tuned"] for r in rs) / len(rs)
            print(f"mean {name}: default {100 * d:.2f}%  tuned {100 * t:.2f}%  ({len(rs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
