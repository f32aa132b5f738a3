#!/usr/bin/env python3
"""`tl` against PyTorch on the same machine, in one run (scripts/bench/run.sh core calls this).

Each contender runs alternately `--repeats` times; medians and ratios (tl / reference) are
printed and everything is written to out/bench/results.json. Sections:

  extract   cold feature extraction on the Cats-vs-Dogs photos (MobileNetV2, real weights)
            vs a PyTorch reference (ImageFolder + eval transform, DataLoader with 2 workers,
            batch 32, inference_mode, the same TorchScript backbone), and the warm re-run
  ceiling   the backbone alone on ready tensors (`tl bench`), the machine's sgemm GFLOP/s,
            each backbone's FLOPs per image (torch.utils.flop_counter) -> physical bound
  train     20 head epochs: tl (features cached / cold) vs the lesson's way (backbone re-run
            every epoch) on a subset
  memory    peak RSS of `tl train` extracting 1,000 and 5,000 generated JPEGs
  accuracy  tl's head vs a PyTorch reference head vs scikit-learn logistic regression on the
            same features (cats_dogs 50/50, pets 5/5)
  big       VGG16 and ResNet50 (random weights) on a small subset, speed only

A bench that needs data that is absent says so and is skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TL = ROOT / "target" / "release" / "tl"
PY = sys.executable
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "out" / "bench"
THREADS = int(os.environ.get("TL_BENCH_THREADS", "2"))


def log(msg: str) -> None:
    print(msg, flush=True)


def run_tl(args: list[str], cache: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, TL_THREADS=str(THREADS), TL_DEVICE=os.environ.get("TL_BENCH_DEVICE", "cpu"))
    if cache:
        env["TL_CACHE_DIR"] = str(cache)
    t = time.perf_counter()
    proc = subprocess.run([str(TL), *args], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"tl {' '.join(args)} failed:\n{proc.stderr}")
    return dt, proc


def median(xs):
    return statistics.median(xs) if xs else None


def subset(src: Path, per_class: int, dst: Path) -> Path:
    """Symlinked subset: the first `per_class` files of each class, sorted by name."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            (dst / cls.name / f.name).symlink_to(f.resolve())
    return dst


EAGER_MODEL = """
import sys, json, torchvision
sys.path.insert(0, {scripts!r})
import export_backbones as eb
meta = json.load(open({sidecar!r}))
net = torchvision.models.get_model(meta["architecture"], weights=None)
w = meta["weights"]
if w.get("file"):
    from safetensors.torch import load_file
    net.load_state_dict(load_file(w["file"]) if w["file"].endswith(".safetensors") else torch.load(w["file"]))
model = eb.feature_extractor(meta["architecture"], net).eval()
"""


def reference_extract(data: Path, features: Path, batch: int = 32, workers: int = 2, eager: bool = False) -> dict:
    """The PyTorch pipeline a user would write. eager=True: torchvision's model with the same
    weights (what most users run); eager=False: the very TorchScript file tl loads."""
    sidecar = features.with_name(features.name.replace(".features.pt", ".json"))
    load = EAGER_MODEL.format(scripts=str(ROOT / "scripts"), sidecar=str(sidecar)) if eager else f"model = torch.jit.load({str(features)!r})"
    code = f"""
import json, time, torch, torchvision.transforms as T
from torchvision.datasets import ImageFolder
from torch.utils.data import DataLoader
torch.set_num_threads({THREADS})
t0 = time.perf_counter()
{load}
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
dl = DataLoader(ImageFolder({str(data)!r}, transform=tf), batch_size={batch}, num_workers={workers})
n = 0
with torch.inference_mode():
    for x, y in dl:
        model(x); n += len(y)
dt = time.perf_counter() - t0
print(json.dumps({{"images": n, "seconds": dt, "images_per_second": n / dt}}))
"""
    t = time.perf_counter()
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_seconds"] = time.perf_counter() - t
    return res


def tl_extract(data: Path, backbone: str, tmp: Path, cache: Path) -> dict:
    run = tmp / f"run-{time.monotonic_ns()}"
    wall, _ = run_tl(["train", "--backbone", backbone, str(data), "--out", str(run), "-q", "--epochs", "1"], cache)
    rep = json.loads((run / "report.json").read_text())
    ex = rep["extraction"]
    return {"images": ex["images"], "computed": ex["computed"], "cached": ex["cached"], "seconds": ex["seconds"],
            "images_per_second": ex["images"] / ex["seconds"], "wall_seconds": wall}


def bench_extract(args, tmp: Path) -> dict:
    data = DATA / "cats_dogs"
    if not data.is_dir():
        return {"skipped": f"{data} not present"}
    features = ROOT / "backbones" / "mobilenet_v2.features.pt"
    tl_runs, ref_runs, warm_runs, eager_runs = [], [], [], []
    for i in range(args.repeats):
        cache = tmp / f"cache-extract-{i}"
        r = tl_extract(data, "mobilenet_v2", tmp, cache)
        tl_runs.append(r)
        log(f"  tl cold   #{i + 1}: {r['images_per_second']:.1f} img/s ({r['seconds']:.1f}s, wall {r['wall_seconds']:.1f}s)")
        w = tl_extract(data, "mobilenet_v2", tmp, cache)
        warm_runs.append(w)
        log(f"  tl warm   #{i + 1}: {w['wall_seconds']:.2f}s wall ({w['cached']} cached)")
        shutil.rmtree(cache)
        r = reference_extract(data, features)
        ref_runs.append(r)
        log(f"  PyTorch, same TorchScript #{i + 1}: {r['images_per_second']:.1f} img/s ({r['seconds']:.1f}s)")
        r = reference_extract(data, features, eager=True)
        eager_runs.append(r)
        log(f"  PyTorch, eager torchvision #{i + 1}: {r['images_per_second']:.1f} img/s ({r['seconds']:.1f}s)")
    tl_rate = median([r["images_per_second"] for r in tl_runs])
    ref_rate = median([r["images_per_second"] for r in ref_runs])
    eager_rate = median([r["images_per_second"] for r in eager_runs])
    cold_wall = median([r["wall_seconds"] for r in tl_runs])
    warm_wall = median([r["wall_seconds"] for r in warm_runs])
    return {"images": tl_runs[0]["images"], "tl_images_per_second": tl_rate, "reference_images_per_second": ref_rate,
            "ratio": tl_rate / ref_rate, "eager_reference_images_per_second": eager_rate, "ratio_vs_eager": tl_rate / eager_rate,
            "tl_cold_wall_seconds": cold_wall, "tl_warm_wall_seconds": warm_wall,
            "warm_over_cold": warm_wall / cold_wall, "runs": {"tl": tl_runs, "reference": ref_runs, "eager_reference": eager_runs, "warm": warm_runs}}


def flops_per_image(features: Path, side: int = 224) -> float:
    code = f"""
import torch, torchvision, json, sys
sys.path.insert(0, {str(ROOT / 'scripts')!r})
import export_backbones as eb
meta = json.load(open({str(features.with_name(features.name.replace('.features.pt', '.json')))!r}))
model = torchvision.models.get_model(meta['architecture'], weights=None).eval()
body = eb.feature_extractor(meta['architecture'], model)
from torch.utils.flop_counter import FlopCounterMode
with torch.no_grad(), FlopCounterMode(display=False) as fc:
    body(torch.randn(1, 3, {side}, {side}))
print(fc.get_total_flops())
"""
    return float(subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def bench_ceiling(args, extract: dict) -> dict:
    out = {}
    for name in args.backbones:
        if not (ROOT / "backbones" / f"{name}.json").is_file():
            out[name] = {"skipped": f"backbones/{name}.json not exported"}
            continue
        rates, gflops = [], []
        for _ in range(args.repeats):
            _, proc = run_tl(["bench", "--backbone", name, "--batch-size", "32", "--batches", "3" if name == "vgg16" else "5", "--json"])
            r = json.loads(proc.stdout)
            rates.append(r["images_per_second"])
            gflops.append(r["matmul_gflops"])
        flops = flops_per_image(ROOT / "backbones" / f"{name}.features.pt")
        rate, peak = median(rates), median(gflops)
        entry = {"backbone_images_per_second": rate, "matmul_gflops": peak, "gflop_per_image": flops / 1e9,
                 "bound_images_per_second": peak * 1e9 / flops, "fraction_of_matmul_peak": rate * flops / (peak * 1e9)}
        if name == "mobilenet_v2" and "tl_images_per_second" in extract:
            entry["tl_extraction_fraction_of_backbone_only"] = extract["tl_images_per_second"] / rate
        out[name] = entry
        log(f"  {name}: {rate:.1f} img/s backbone-only, {flops / 1e9:.2f} GFLOP/img, matmul {peak:.0f} GFLOP/s -> "
            f"bound {entry['bound_images_per_second']:.1f} img/s, {100 * entry['fraction_of_matmul_peak']:.0f}% of peak")
    return out


def lesson_train(data: Path, features: Path, epochs: int) -> float:
    """The lesson's way: every epoch re-runs the frozen backbone over every image."""
    code = f"""
import time, torch, torchvision.transforms as T
from torchvision.datasets import ImageFolder
from torch.utils.data import DataLoader
torch.set_num_threads({THREADS}); torch.manual_seed(0)
t0 = time.perf_counter()
backbone = torch.jit.load({str(features)!r})
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
ds = ImageFolder({str(data)!r}, transform=tf)
dl = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)
head = torch.nn.Linear(1280, len(ds.classes)); opt = torch.optim.Adam(head.parameters(), 1e-3)
for epoch in range({epochs}):
    for x, y in dl:
        with torch.no_grad():
            f = backbone(x)
        loss = torch.nn.functional.cross_entropy(head(f), y)
        opt.zero_grad(); loss.backward(); opt.step()
print(time.perf_counter() - t0)
"""
    t = time.perf_counter()
    subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - t


def bench_train(args, tmp: Path) -> dict:
    src = DATA / "cats_dogs"
    if not src.is_dir():
        return {"skipped": f"{src} not present"}
    data = subset(src, args.train_subset // 2, tmp / "train-subset")
    features = ROOT / "backbones" / "mobilenet_v2.features.pt"
    cold, warm, lesson = [], [], []
    for i in range(args.train_repeats):
        cache = tmp / f"cache-train-{i}"
        t, _ = run_tl(["train", "--backbone", "mobilenet_v2", str(data), "--out", str(tmp / f"tr-{i}-a"), "-q", "--epochs", "20", "--patience", "0"], cache)
        cold.append(t)
        t, _ = run_tl(["train", "--backbone", "mobilenet_v2", str(data), "--out", str(tmp / f"tr-{i}-b"), "-q", "--epochs", "20", "--patience", "0"], cache)
        warm.append(t)
        lesson.append(lesson_train(data, features, 20))
        log(f"  #{i + 1}: tl cold {cold[-1]:.1f}s, tl cached {warm[-1]:.2f}s, lesson's way {lesson[-1]:.1f}s")
    return {"images": args.train_subset, "epochs": 20, "tl_cold_seconds": median(cold), "tl_cached_seconds": median(warm),
            "lesson_seconds": median(lesson), "speedup_cached": median(lesson) / median(warm), "speedup_cold": median(lesson) / median(cold)}


def bench_memory(args, tmp: Path) -> dict:
    out = {}
    gen = tmp / "gen"
    code = f"""
import numpy as np, sys
from pathlib import Path
from PIL import Image
root = Path({str(gen)!r}); rng = np.random.default_rng(0)
n = int(sys.argv[1])
yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
for i in range(n):
    cls = root / ("a" if i % 2 else "b"); cls.mkdir(parents=True, exist_ok=True)
    a, b = rng.uniform(-1, 1, 2)
    img = np.stack([128 + 90 * np.sin(a * xx / 40 + c + b * yy / 30) for c in range(3)], -1) + rng.normal(0, 8, (375, 500, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(cls / f"{{i:05d}}.jpg", quality=85)
"""
    for n in args.memory_sizes:
        if gen.exists():
            shutil.rmtree(gen)
        subprocess.run([PY, "-c", code, str(n)], check=True)
        cache = tmp / f"cache-mem-{n}"
        env = dict(os.environ, TL_THREADS=str(THREADS), TL_CACHE_DIR=str(cache), TL_DEVICE="cpu")
        t = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", str(TL), "train", "--backbone", "mobilenet_v2", str(gen), "--out", str(tmp / f"mem-{n}"), "-q", "--epochs", "1"],
                              env=env, capture_output=True, text=True, check=True)
        peak_kib = int(proc.stderr.strip().splitlines()[-1])
        out[str(n)] = {"peak_rss_mib": peak_kib / 1024, "seconds": time.perf_counter() - t}
        log(f"  {n} JPEGs: peak RSS {peak_kib / 1024:.0f} MiB ({out[str(n)]['seconds']:.0f}s)")
        shutil.rmtree(cache)
    return out


def reference_head(features: Path) -> float:
    """A PyTorch user's head: nn.Linear, Adam 1e-3, 30 epochs, batch 64, on the same features."""
    import torch
    from safetensors.torch import load_file
    t = load_file(str(features))
    torch.manual_seed(0)
    head = torch.nn.Linear(t["train_x"].shape[1], int(t["train_y"].max()) + 1)
    opt = torch.optim.Adam(head.parameters(), 1e-3)
    n = len(t["train_y"])
    for _ in range(30):
        perm = torch.randperm(n)
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(head(t["train_x"][idx]), t["train_y"][idx])
            opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        return float((head(t["val_x"]).argmax(1) == t["val_y"]).float().mean())


def bench_accuracy(args, tmp: Path) -> dict:
    out = {}
    for name in ("cats_dogs", "pets"):
        data = DATA / name
        if not data.is_dir():
            out[name] = {"skipped": f"{data} not present"}
            continue
        rows = []
        for seed in args.seeds:
            feats = tmp / f"feat-{name}-{seed}.safetensors"
            run = tmp / f"acc-{name}-{seed}"
            run_tl(["train", "--backbone", "mobilenet_v2", str(data), "--val-split", "0.5", "--seed", str(seed), "--out", str(run), "-q", "--save-features", str(feats)], tmp / "cache-acc")
            tl_acc = json.loads((run / "report.json").read_text())["val_accuracy"]
            sk = json.loads(subprocess.run([PY, str(ROOT / "scripts" / "bench" / "sklearn_baseline.py"), str(feats), "--json"], capture_output=True, text=True, check=True).stdout)["val_accuracy"]
            ref = reference_head(feats)
            rows.append({"seed": seed, "tl": tl_acc, "sklearn": sk, "pytorch_reference": ref, "tl_minus_sklearn_points": 100 * (tl_acc - sk)})
            log(f"  {name} seed {seed}: tl {100 * tl_acc:.2f}%  sklearn {100 * sk:.2f}%  PyTorch head {100 * ref:.2f}%")
        out[name] = rows
    return out


def bench_big(args, tmp: Path) -> dict:
    src = DATA / "cats_dogs"
    if not src.is_dir():
        return {"skipped": f"{src} not present"}
    data = subset(src, args.big_subset // 2, tmp / "big-subset")
    out = {}
    for name in ("vgg16", "resnet50"):
        if not (ROOT / "backbones" / f"{name}.json").is_file():
            out[name] = {"skipped": f"backbones/{name}.json not exported"}
            continue
        tl_r = tl_extract(data, name, tmp, tmp / f"cache-big-{name}")
        ref = reference_extract(data, ROOT / "backbones" / f"{name}.features.pt")
        out[name] = {"images": tl_r["images"], "tl_images_per_second": tl_r["images_per_second"],
                     "reference_images_per_second": ref["images_per_second"], "ratio": tl_r["images_per_second"] / ref["images_per_second"]}
        log(f"  {name}: tl {tl_r['images_per_second']:.2f} img/s, PyTorch {ref['images_per_second']:.2f} img/s, ratio {out[name]['ratio']:.2f}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", default=["extract", "ceiling", "train", "memory", "accuracy", "big"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-repeats", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=100)
    parser.add_argument("--big-subset", type=int, default=40)
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "resnet50", "vgg16"], help="for the ceiling section")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "threads": THREADS, "uname": " ".join(os.uname())}
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for section in args.sections:
            log(f"== {section}")
            fn = {"extract": lambda: bench_extract(args, tmp), "ceiling": lambda: bench_ceiling(args, results.get("extract", {})),
                  "train": lambda: bench_train(args, tmp), "memory": lambda: bench_memory(args, tmp),
                  "accuracy": lambda: bench_accuracy(args, tmp), "big": lambda: bench_big(args, tmp)}[section]
            new = fn()
            if section == "ceiling" and isinstance(results.get("ceiling"), dict):
                new = {**results["ceiling"], **new}  # keep backbones measured in an earlier run
            results[section] = new
            if "skipped" in results[section]:
                log(f"  SKIPPED: {results[section]['skipped']}")
            results_path.write_text(json.dumps(results, indent=1))
    summary(results)
    log(f"\nresults: {results_path.relative_to(ROOT)}")
    return 0


def summary(r: dict) -> None:
    log("\n== summary (medians; ratios are tl / reference)")
    e = r.get("extract", {})
    if "ratio" in e:
        log(f"cold extraction, {e['images']} photos: tl {e['tl_images_per_second']:.1f} img/s vs PyTorch with the same TorchScript {e['reference_images_per_second']:.1f} img/s -> {e['ratio']:.2f}x")
        if "ratio_vs_eager" in e:
            log(f"                 vs PyTorch with torchvision's eager model {e['eager_reference_images_per_second']:.1f} img/s -> {e['ratio_vs_eager']:.2f}x")
        log(f"warm re-run: {e['tl_warm_wall_seconds']:.2f}s vs cold {e['tl_cold_wall_seconds']:.1f}s -> {100 * e['warm_over_cold']:.1f}%")
    c = r.get("ceiling", {})
    for name, v in c.items():
        if "fraction_of_matmul_peak" in v:
            extra = f", tl extraction = {100 * v['tl_extraction_fraction_of_backbone_only']:.0f}% of it" if "tl_extraction_fraction_of_backbone_only" in v else ""
            log(f"{name}: backbone-only {v['backbone_images_per_second']:.1f} img/s = {100 * v['fraction_of_matmul_peak']:.0f}% of matmul peak ({v['matmul_gflops']:.0f} GFLOP/s){extra}")
    t = r.get("train", {})
    if "speedup_cached" in t:
        log(f"20 epochs on {t['images']} images: tl cached {t['tl_cached_seconds']:.2f}s, tl cold {t['tl_cold_seconds']:.1f}s, lesson {t['lesson_seconds']:.1f}s -> {t['speedup_cached']:.0f}x / {t['speedup_cold']:.1f}x")
    for n, v in r.get("memory", {}).items():
        if isinstance(v, dict) and "peak_rss_mib" in v:
            log(f"peak RSS extracting {n} JPEGs: {v['peak_rss_mib']:.0f} MiB")
    for name, rows in r.get("accuracy", {}).items():
        if isinstance(rows, list):
            log(f"{name}: " + "; ".join(f"seed {x['seed']}: tl {100 * x['tl']:.2f} / sklearn {100 * x['sklearn']:.2f} / PyTorch {100 * x['pytorch_reference']:.2f}" for x in rows))
    for name, v in r.get("big", {}).items():
        if isinstance(v, dict) and "ratio" in v:
            log(f"{name} (random weights), {v['images']} photos: tl {v['tl_images_per_second']:.2f} img/s vs PyTorch {v['reference_images_per_second']:.2f} -> {v['ratio']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
