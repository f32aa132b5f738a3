#!/usr/bin/env python3
"""GPU benchmark: `tl` against a PyTorch reference on CUDA (scripts/bench/run.sh gpu calls this).

ResNet50 (random weights; speed only), batch 256, JPEG decoding included, with and without
mixed precision:
  - reference: ImageFolder + eval transform, DataLoader (pinned memory, W workers), the same
    TorchScript backbone on the GPU, inference_mode, optional autocast(fp16)
  - tl: `tl train --device cuda --batch-size 256 [--amp]` (cold cache), extraction img/s
  - both: the backbone alone on ready GPU tensors (`tl bench`, and the same in Python)
Contenders alternate over --rounds rounds and medians are reported. Sized to finish in a
few minutes on one H100. Writes a JSON file (--json-out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(msg, flush=True)


def _one_image(args: tuple[Path, int]) -> None:
    import numpy as np
    from PIL import Image
    dst, i = args
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    a, b = rng.uniform(-1, 1, 2)
    img = np.stack([128 + 90 * np.sin(a * xx / 40 + c + b * yy / 30) for c in range(3)], -1) + rng.normal(0, 8, (375, 500, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(dst / ("a" if i % 2 else "b") / f"{i:05d}.jpg", quality=85)


def generate(dst: Path, n: int) -> None:
    """n photo-sized (500x375) JPEGs in two class folders, made in parallel."""
    from multiprocessing import Pool
    for c in ("a", "b"):
        (dst / c).mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(_one_image, [(dst, i) for i in range(n)], chunksize=64)


def reference(data: Path, features: Path, batch: int, workers: int, amp: bool) -> dict:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    from torch.utils.data import DataLoader
    model = torch.jit.load(str(features), map_location="cuda")
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dl = DataLoader(ImageFolder(str(data), transform=tf), batch_size=batch, num_workers=workers, pin_memory=True)
    torch.cuda.synchronize()
    t = time.perf_counter()
    n = 0
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        for x, _ in dl:
            model(x.cuda(non_blocking=True))
            n += len(x)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"images": n, "seconds": dt, "images_per_second": n / dt}


def backbone_only(features: Path, batch: int, amp: bool, iters: int = 20) -> float:
    model = torch.jit.load(str(features), map_location="cuda")
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            model(x)
        torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t)


def tl_extract(tl: str, data: Path, backbones: Path, batch: int, amp: bool, tmp: Path, threads: int) -> dict:
    out = tmp / f"run-{time.monotonic_ns()}"
    env = dict(os.environ, TL_CACHE_DIR=str(tmp / f"cache-{time.monotonic_ns()}"), TL_BACKBONES=str(backbones), TL_THREADS=str(threads))
    args = [tl, "--device", "cuda", "train", "--backbone", "resnet50", str(data), "--out", str(out), "-q", "--epochs", "1", "--batch-size", str(batch)]
    if amp:
        args.append("--amp")
    t = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"tl train failed: {proc.stderr.strip()[-800:]}")
        return {"error": proc.stderr.strip()[-2000:]}
    ex = json.loads((out / "report.json").read_text())["extraction"]
    return {"images": ex["images"], "seconds": ex["seconds"], "images_per_second": ex["images"] / ex["seconds"], "wall_seconds": time.perf_counter() - t}


def tl_bench(tl: str, backbones: Path, batch: int, amp: bool) -> dict:
    args = [tl, "--device", "cuda", "bench", "--backbone", "resnet50", "--batch-size", str(batch), "--batches", "20", "--json"]
    if amp:
        args.append("--amp")
    proc = subprocess.run(args, env=dict(os.environ, TL_BACKBONES=str(backbones)), capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"tl bench failed: {proc.stderr.strip()[-800:]}")
        return {"error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tl", default=str(ROOT / "target" / "release" / "tl"))
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--rounds", type=int, default=3, help="contenders alternate; medians are reported")
    p.add_argument("--json-out", default=str(ROOT / "out" / "bench" / "gpu.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        log("bench_gpu: CUDA is not available here; nothing to measure")
        return 1
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpus": os.cpu_count(), "batch": args.batch, "images": args.images}
    log(f"device: {res['device']}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="tl-gpu-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        t = time.perf_counter()
        generate(data, args.images)
        log(f"generated {args.images} JPEGs (500x375) in {time.perf_counter() - t:.0f}s")
        backbones = tmp / "backbones"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "export_backbones.py"), "resnet50", "--weights", "none", "--out", str(backbones)], check=True, capture_output=True)
        features = backbones / "resnet50.features.pt"
        for amp in (False, True):
            key = "amp" if amp else "fp32"
            runs = {"reference_backbone_only": [], "tl_backbone_only": [], "reference": [], "tl": []}
            for _ in range(args.rounds):  # alternated, so drift hits both contenders alike
                runs["reference_backbone_only"].append(backbone_only(features, args.batch, amp))
                runs["tl_backbone_only"].append(tl_bench(args.tl, backbones, args.batch, amp).get("images_per_second", float("nan")))
                runs["reference"].append(reference(data, features, args.batch, args.workers, amp)["images_per_second"])
                runs["tl"].append(tl_extract(args.tl, data, backbones, args.batch, amp, tmp, args.workers).get("images_per_second", float("nan")))
            r = {k: {"runs": v, "median": statistics.median(v)} for k, v in runs.items()}
            res[key] = r
            med = {k: v["median"] for k, v in r.items()}
            log(f"[{key}] backbone only (median of {args.rounds}): PyTorch {med['reference_backbone_only']:.0f} img/s, tl {med['tl_backbone_only']:.0f} img/s (ratio {med['tl_backbone_only'] / med['reference_backbone_only']:.2f})")
            log(f"[{key}] with JPEG decoding (median of {args.rounds}): PyTorch DataLoader {med['reference']:.0f} img/s, tl {med['tl']:.0f} img/s (ratio {med['tl'] / med['reference']:.2f})")
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(res, indent=1))
    log(f"results: {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
