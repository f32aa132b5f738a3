"""Class imbalance (issue #29's bar): Oxford pets, 37 breeds x 10 photos; per seed, 2 photos of
each breed held out as the test side, the other 8 for training — except 5 breeds (drawn with
the seed) cut to 2 training photos. `tl train` (MobileNetV2, train/+test/ layout: test/ is the
validation side) with each --balance; for each: overall accuracy and balanced accuracy on the
74 test photos, and the recall on the 5 cut breeds' photos that were not trained on — their 2
test photos and the 6 left out by the cut (40 photos, by `tl eval` on that folder).

    scripts/bench/run.sh balance [--seeds 0 1 2] [--tl target/release/tl]
"""
import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout(src: Path, dst: Path, seed: int) -> list[str]:
    rng = random.Random(seed)
    breeds = sorted(p.name for p in src.iterdir() if p.is_dir())
    cut = sorted(rng.sample(breeds, 5))
    if dst.exists():
        shutil.rmtree(dst)
    for b in breeds:
        files = sorted(p for p in (src / b).iterdir() if p.is_file())
        rng.shuffle(files)
        test, train = files[:2], files[2:]
        unused = []
        if b in cut:
            train, unused = train[:2], train[2:]
        rare = test + unused if b in cut else []
        for side, chosen in (("train", train), ("test", test), ("rare", rare)):
            if not chosen:
                continue
            (dst / side / b).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                (dst / side / b / f.name).symlink_to(f.resolve())
    return cut


def run(tl: str, data: Path, out: Path, balance: str) -> dict:
    subprocess.run([tl, "train", "--backbone", "mobilenet_v2", str(data), "--balance", balance,
                    "--seed", "0", "--out", str(out), "--force", "-q"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((out / "report.json").read_text())
    rare = subprocess.run([tl, "eval", str(out), str(data / "rare"), "--json"], check=True,
                          capture_output=True, text=True).stdout
    return report, json.loads(rare)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tl", default=str(ROOT / "target/release/tl"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--balance", nargs="+", default=["none", "weights", "sampler", "logit"])
    ap.add_argument("--src", default=str(ROOT.parent / "shared/data/pets"))
    ap.add_argument("--out", default=str(ROOT / "out/bench-balance"))
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        print(f"bench balance: {src} not present, skipped")
        return 0
    rows = []
    for seed in args.seeds:
        data = out / f"data-{seed}"
        cut = layout(src, data, seed)
        for balance in args.balance:
            r, rare = run(args.tl, data, out / f"run-{seed}-{balance}", balance)
            v = r["validation"]
            cut_recall = rare["report"]["accuracy"]
            rows.append({"seed": seed, "balance": balance, "cut": cut, "cut_recall": cut_recall,
                         "accuracy": v["accuracy"], "balanced_accuracy": v["mean_class_accuracy"],
                         "used": r.get("balance")})
            print(json.dumps(rows[-1]), flush=True)
    print("seed  balance   cut-breed recall  accuracy  balanced accuracy")
    for r in rows:
        print(f"{r['seed']:>4}  {r['balance']:<8}  {100 * r['cut_recall']:>15.1f}%  {100 * r['accuracy']:>7.2f}%  {100 * r['balanced_accuracy']:>16.2f}%")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
