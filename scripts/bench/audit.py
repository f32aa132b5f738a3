#!/usr/bin/env python3
"""`tl audit` on a planted benchmark (issue #25): problems of known kinds are planted in a copy
of ../shared/data/cats_dogs, the audit runs once, and each finding list is scored against what
was planted.

Recipe (seeded, --seed): from the 1,300 photos (650 cat, 650 dog; or any class-per-folder
set given by --src, flips and cross-class copies then going to a seeded other class),
  - 20 near-duplicates: a photo resized to 90 % (Lanczos) and re-saved at JPEG quality 60; half
    of them first cropped by 3-8 pixels on each side; same class, a new file name;
  - 5 exact copies: the bytes of a photo under a new name (2 of them in the other class);
  - 30 flipped labels: 15 cats moved to dog/, 15 dogs to cat/ (renamed, so names do not tell);
  - 5 zero-byte and 5 truncated JPEGs (the first 40 % of a photo's bytes);
  - 4 non-photos: a logo, a grey "photo unavailable" placeholder, a page of text, a colour
    gradient (2 in each class).
Every file is named p<NNNN>.jpg in shuffled order. Untouched photos are hard links (or copies).

Prints the scores and the similarity of planted pairs against the nearest unplanted pairs
(the evidence for the near-duplicate threshold), and writes $OUT/results.json.

  .venv/bin/python scripts/bench/audit.py [--tl target/release/tl] [--out out/bench-audit]
"""
import argparse, json, os, random, shutil, subprocess, sys, time
from pathlib import Path
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]


def place(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def non_photos(rng):
    w, h = 320, 240
    logo = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(logo)
    d.ellipse((60, 40, 180, 160), fill=(200, 30, 40))
    d.rectangle((150, 90, 280, 200), fill=(20, 80, 200))
    d.text((70, 205), "HAPPY PAWS RESCUE", fill="black")
    placeholder = Image.new("RGB", (w, h), (200, 200, 200))
    d = ImageDraw.Draw(placeholder)
    d.rectangle((10, 10, w - 10, h - 10), outline=(150, 150, 150), width=3)
    d.text((90, 110), "photo unavailable", fill=(90, 90, 90))
    text = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(text)
    words = "the quick brown fox jumps over the lazy dog adoption form name age breed".split()
    for y in range(8, h - 10, 14):
        d.text((8, y), " ".join(rng.choice(words) for _ in range(7)), fill="black")
    gradient = Image.new("RGB", (w, h))
    gradient.putdata([(x * 255 // w, y * 255 // h, 128) for y in range(h) for x in range(w)])
    return {"logo": logo, "placeholder": placeholder, "text": text, "gradient": gradient}


def build(src, data, seed):
    rng = random.Random(seed)
    classes = sorted(d.name for d in src.iterdir() if d.is_dir())
    photos = {c: sorted((src / c).glob("*.jpg")) for c in classes}
    pool = [(c, p) for c in classes for p in photos[c]]
    # Another class: with two classes the other one, else a seeded choice.
    other = lambda c: ([k for k in classes if k != c][0] if len(classes) == 2
                       else rng.choice([k for k in classes if k != c]))
    rng.shuffle(pool)
    flips, pool = pool[:0], pool
    # 30 flips: 15 from each of the first two classes with two classes, else the first 30.
    flips = ([x for x in pool if x[0] == classes[0]][:15] + [x for x in pool if x[0] == classes[1]][:15]
             if len(classes) == 2 else pool[:30])
    flipped = {p for _, p in flips}
    rest = [x for x in pool if x[1] not in flipped]
    near_src, exact_src, trunc_src = rest[:20], rest[20:25], rest[25:30]
    names = iter(rng.sample(range(10000), 3000))
    for c in classes:
        (data / c).mkdir(parents=True)
    def new(cls):
        return data / cls / f"p{next(names):04d}.jpg"
    truth = {"near": [], "exact": [], "flips": [], "broken": [], "non_photo": [], "paths": {}}
    for c, p in pool:
        if p in flipped:
            continue
        dst = new(c)
        place(p, dst)
        truth["paths"][str(p)] = str(dst)
    for i, (c, p) in enumerate(near_src):
        im = Image.open(p).convert("RGB")
        if i % 2:
            l, t, r, b = (rng.randint(3, 8) for _ in range(4))
            im = im.crop((l, t, im.width - r, im.height - b))
        im = im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.LANCZOS)
        dst = new(c)
        im.save(dst, quality=60)
        truth["near"].append([truth["paths"][str(p)], str(dst)])
    for i, (c, p) in enumerate(exact_src):
        cls = c if i < 3 else other(c)
        dst = new(cls)
        shutil.copyfile(p, dst)
        truth["exact"].append([truth["paths"][str(p)], str(dst)])
    for c, p in flips:
        dst = new(other(c))
        place(p, dst)
        truth["flips"].append(str(dst))
    for i in range(5):
        dst = new(rng.choice(classes))
        dst.write_bytes(b"")
        truth["broken"].append(str(dst))
    for c, p in trunc_src:
        dst = new(c)
        b = p.read_bytes()
        dst.write_bytes(b[: int(len(b) * 0.4)])
        truth["broken"].append(str(dst))
    for i, (kind, im) in enumerate(non_photos(rng).items()):
        dst = new(classes[(i + 1) % len(classes)])
        im.save(dst, quality=90)
        truth["non_photo"].append(str(dst))
    return truth


def score(report, truth, top_outliers):
    pair = lambda a, b: frozenset((a, b))
    planted_near = {pair(*p) for p in truth["near"]}
    found = [pair(p["a"], p["b"]) for p in report["near_duplicates"]]
    exact_groups = [set(g) for g in report["exact_duplicates"]]
    exact_found = sum(any(set(p) <= g for g in exact_groups) for p in truth["exact"])
    near_found = sum(p in found for p in planted_near)
    false_pairs = [sorted(p) for p in found if p not in planted_near]
    unreadable = {u["path"] for u in report["unreadable"]}
    broken_found = sum(b in unreadable for b in truth["broken"])
    issues = [i["path"] for i in report["label_issues"]]
    flips = set(truth["flips"])
    top30 = sum(p in flips for p in issues[:30])
    top60 = sum(p in flips for p in issues[:60])
    outliers = [o["path"] for o in report["outliers"]]
    ranks = {Path(p).name: (outliers.index(p) + 1 if p in outliers else None) for p in truth["non_photo"]}
    return {
        "near_duplicates_found": near_found, "near_duplicates_planted": len(planted_near),
        "false_pairs": len(false_pairs), "false_pair_list": false_pairs[:10],
        "exact_found": exact_found, "exact_planted": len(truth["exact"]),
        "broken_found": broken_found, "broken_planted": len(truth["broken"]),
        "label_issues": len(issues), "flips_in_top30": top30, "flips_in_top60": top60,
        "flips_planted": len(flips),
        "non_photo_outlier_ranks": ranks, "outliers": len(outliers),
        "non_photos_in_top": sum(r is not None and r <= top_outliers for r in ranks.values()),
    }


def planted_similarities(tl, data, truth, env):
    """Similarity of each planted pair and of the most similar unplanted pairs (threshold evidence)."""
    out = subprocess.run([tl, "audit", "--backbone", "mobilenet_v2", str(data), "--near-duplicate", "0.8",
                          "--folds", "2", "--epochs", "1", "--json"], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(out.stderr)
    r = json.loads(out.stdout)
    planted = {frozenset(p) for p in truth["near"]}
    sims = {"planted": [], "other": []}
    for p in r["near_duplicates"]:
        sims["planted" if frozenset((p["a"], p["b"])) in planted else "other"].append(p["similarity"])
    return sims


def leak_check(tl, data, out, env):
    """Train a run on the planted data (20 % validation), audit with --run: every near-duplicate
    pair must be flagged a leak exactly when split.json puts its files on different sides."""
    run = out / "run"
    subprocess.run([tl, "train", "--backbone", "mobilenet_v2", str(data), "--out", str(run), "--force", "-q"],
                   check=True, capture_output=True, env=env)
    split = json.loads((run / "split.json").read_text())
    side = {}
    for k in ("train", "val"):
        for e in split[k]:
            side[str(data / e["path"])] = k
    res = subprocess.run([tl, "audit", str(data), "--run", str(run), "--json"], capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(res.stderr)
    r = json.loads(res.stdout)
    pairs = r["near_duplicates"]
    right = sum(p["leak"] == (side.get(p["a"]) != side.get(p["b"])) for p in pairs)
    leaks = [p for p in pairs if p["leak"]]
    return {"pairs": len(pairs), "leaks_flagged": len(leaks), "leak_flag_correct": right,
            "leaks_train_first": sum(side.get(p["a"]) == "train" for p in leaks),
            "exact_duplicate_leaks": len(r["exact_duplicate_leaks"])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tl", default=str(ROOT / "target/release/tl"))
    ap.add_argument("--src", default=str(ROOT.parent / "shared/data/cats_dogs"))
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "out/bench-audit")))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        print(f"SKIPPED: {src} not present"); return
    data = out / f"planted-{args.seed}"
    shutil.rmtree(data, ignore_errors=True)
    truth = build(src, data, args.seed)
    env = dict(os.environ)
    sims = planted_similarities(args.tl, data, truth, env)
    t0 = time.time()
    res = subprocess.run([args.tl, "audit", "--backbone", "mobilenet_v2", str(data), "--json",
                          "--html", str(out / "audit.html"), "--force"], capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if res.returncode:
        sys.exit(res.stderr)
    report = json.loads(res.stdout)
    s = score(report, truth, top_outliers=10)
    s["seconds"] = round(wall, 2)
    s["analyse_seconds"] = report["timing_seconds"]["analyse"]
    s["planted_pair_similarity"] = {"min": min(sims["planted"], default=None), "max": max(sims["planted"], default=None),
                                    "found_at_0.8": len(sims["planted"])}
    s["other_pair_similarity_top5"] = sorted(sims["other"], reverse=True)[:5]
    s["near_duplicate_threshold"] = report["used"]["near_duplicate"]
    s["leakage"] = leak_check(args.tl, data, out, env)
    print(json.dumps(s, indent=1))
    (out / "results.json").write_text(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
