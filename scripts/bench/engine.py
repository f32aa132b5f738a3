#!/usr/bin/env python3
"""`--engine onnx` (issue #13) on this machine, contenders alternated, medians:

  backbone  the backbone alone on ready tensors (batch 32): `tl --engine onnx bench`,
            `tl --engine torch bench` and ONNX Runtime in Python on the same .onnx file
            (MobileNetV2 real weights, ResNet50 random weights)
  extract   cold extraction of the cats_dogs photos, decoding included: tl with ONNX
            Runtime (its default layout: workers that each decode and run their own
            batches; and one session fed by decoder threads, `--decode-threads 2`), tl with
            libtorch, and the PyTorch eager reference (scripts/bench/core.py)
  accuracy  validation accuracy of the two engines, cats_dogs (--val-split 0.5) and pets
            (5/5), seeds 0 1 2

Backbones are exported (with their ONNX files) into out/bench-onnx/backbones; results go to
out/bench-onnx/results.json. Sections needing ../shared data skip, saying so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core as B  # noqa: E402

OUT = B.ROOT / "out" / "bench-onnx"
BB = OUT / "backbones"
WEIGHTS = B.ROOT.parent / "shared" / "models" / "mobilenet_v2-imagenet.safetensors"

PY_ORT = """
import sys, time, json, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; o.inter_op_num_threads = 1
s = ort.InferenceSession({path!r}, o, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((32, 3, {side}, {side})).astype(np.float32)
for _ in range(2): s.run(None, {{"image": x}})
t = time.perf_counter()
for _ in range({batches}): s.run(None, {{"image": x}})
print(json.dumps({{"images_per_second": {batches} * 32 / (time.perf_counter() - t), "version": ort.__version__}}))
"""


def export(arch: str) -> None:
    if (BB / f"{arch}.json").is_file():
        return
    weights = str(WEIGHTS) if arch == "mobilenet_v2" and WEIGHTS.is_file() else "none"
    subprocess.run([B.PY, str(B.ROOT / "scripts" / "export_backbones.py"), arch, "--weights", weights,
                    "--cuts", "none", "--out", str(BB)], check=True)


def tl_bench(arch: str, engine: str, batches: int) -> float:
    _, proc = B.run_tl(["--engine", engine, "--backbones-dir", str(BB), "bench", "-b", arch, "--batches",
                        str(batches), "--matmul-size", "0", "--json"])
    rep = json.loads(proc.stdout)
    assert rep["engine"] == engine, rep
    return rep["images_per_second"]


def py_ort(arch: str, batches: int) -> float:
    code = PY_ORT.format(threads=B.THREADS, path=str(BB / f"{arch}.features.onnx"), side=224, batches=batches)
    proc = subprocess.run([B.PY, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["images_per_second"]


def bench_backbone(args) -> dict:
    out = {}
    for arch, batches in (("mobilenet_v2", 5), ("resnet50", 3)):
        export(arch)
        runs = {"tl_onnx": [], "tl_torch": [], "python_ort": []}
        for i in range(args.repeats):
            runs["tl_onnx"].append(tl_bench(arch, "onnx", batches))
            runs["python_ort"].append(py_ort(arch, batches))
            runs["tl_torch"].append(tl_bench(arch, "torch", batches))
            B.log(f"  {arch} #{i + 1}: tl onnx {runs['tl_onnx'][-1]:.1f}, Python ORT {runs['python_ort'][-1]:.1f}, "
                  f"tl torch {runs['tl_torch'][-1]:.1f} img/s")
        med = {k: B.median(v) for k, v in runs.items()}
        out[arch] = {**{f"{k}_images_per_second": v for k, v in med.items()},
                     "tl_onnx_over_python_ort": med["tl_onnx"] / med["python_ort"],
                     "tl_onnx_over_tl_torch": med["tl_onnx"] / med["tl_torch"], "runs": runs}
    return out


def cold(data: Path, engine: str, tmp: Path, extra: tuple[str, ...] = ()) -> dict:
    run = tmp / f"run-{engine}-{os.urandom(4).hex()}"
    _, _ = B.run_tl([*extra, "--engine", engine, "--backbones-dir", str(BB), "train", "-b", "mobilenet_v2", str(data),
                     "--out", str(run), "-q", "--epochs", "1", "--no-cache"])
    ex = json.loads((run / "report.json").read_text())["extraction"]
    assert ex["engine"] == engine, ex
    return {"seconds": ex["seconds"], "images_per_second": ex["images"] / ex["seconds"], "images": ex["images"]}


def bench_extract(args, tmp: Path) -> dict:
    data = B.DATA / "cats_dogs"
    if not data.is_dir():
        return {"skipped": f"{data} not present"}
    export("mobilenet_v2")
    # ONNX Runtime's backbone-only rate is measured in each round too, so that the ratio
    # compares runs minutes apart, not sections a quarter of an hour apart.
    runs = {"tl_onnx": [], "tl_onnx_decoders": [], "python_ort_backbone_only": [], "tl_torch": [],
            "pytorch_eager": []}
    for i in range(args.repeats):
        runs["tl_onnx"].append(cold(data, "onnx", tmp)["images_per_second"])
        runs["tl_onnx_decoders"].append(cold(data, "onnx", tmp, ("--decode-threads", str(B.THREADS)))["images_per_second"])
        runs["python_ort_backbone_only"].append(py_ort("mobilenet_v2", 5))
        runs["tl_torch"].append(cold(data, "torch", tmp)["images_per_second"])
        runs["pytorch_eager"].append(B.reference_extract(data, BB / "mobilenet_v2.features.pt", eager=True)["images_per_second"])
        B.log(f"  cold #{i + 1}: tl onnx {runs['tl_onnx'][-1]:.1f}, one session + decoders "
              f"{runs['tl_onnx_decoders'][-1]:.1f} (Python ORT backbone only "
              f"{runs['python_ort_backbone_only'][-1]:.1f}), tl torch {runs['tl_torch'][-1]:.1f}, "
              f"PyTorch eager {runs['pytorch_eager'][-1]:.1f} img/s")
    med = {k: B.median(v) for k, v in runs.items()}
    return {**{f"{k}_images_per_second": v for k, v in med.items()},
            "tl_onnx_over_tl_torch": med["tl_onnx"] / med["tl_torch"],
            "tl_onnx_over_pytorch_eager": med["tl_onnx"] / med["pytorch_eager"],
            "tl_onnx_over_python_ort_backbone_only": med["tl_onnx"] / med["python_ort_backbone_only"],
            "per_round_over_python_ort_backbone_only": [a / b for a, b in zip(runs["tl_onnx"], runs["python_ort_backbone_only"])],
            "tl_onnx_over_one_session_with_decoders": med["tl_onnx"] / med["tl_onnx_decoders"], "runs": runs}


def bench_accuracy(args, tmp: Path) -> dict:
    out = {}
    for name, split in (("cats_dogs", "0.5"), ("pets", "0.5")):
        data = B.DATA / name
        if not data.is_dir():
            out[name] = {"skipped": f"{data} not present"}
            continue
        cache = tmp / f"cache-accuracy-{name}"
        for seed in args.seeds:
            row = {}
            for engine in ("onnx", "torch"):
                run = tmp / f"acc-{name}-{engine}-{seed}"
                B.run_tl(["--engine", engine, "--backbones-dir", str(BB), "train", "-b", "mobilenet_v2", str(data),
                          "--out", str(run), "-q", "--val-split", split, "--seed", str(seed)], cache)
                row[engine] = json.loads((run / "report.json").read_text())["val_accuracy"]
            out.setdefault(name, {})[str(seed)] = row
            B.log(f"  {name} seed {seed}: onnx {100 * row['onnx']:.2f}%, torch {100 * row['torch']:.2f}%")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", default=["backbone", "extract", "accuracy"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="tl-bench-onnx-") as tmp_s:
        tmp = Path(tmp_s)
        for section in args.sections:
            B.log(f"== {section}")
            results[section] = {"backbone": lambda: bench_backbone(args),
                                "extract": lambda: bench_extract(args, tmp),
                                "accuracy": lambda: bench_accuracy(args, tmp)}[section]()
            path.write_text(json.dumps(results, indent=1))
    summary(results)
    return 0


def summary(r: dict) -> None:
    B.log("\n== summary (medians)")
    for arch, v in r.get("backbone", {}).items():
        B.log(f"{arch} backbone only: tl onnx {v['tl_onnx_images_per_second']:.1f}, Python ORT {v['python_ort_images_per_second']:.1f}, "
              f"tl torch {v['tl_torch_images_per_second']:.1f} img/s -> tl onnx / Python ORT {v['tl_onnx_over_python_ort']:.2f}x, "
              f"/ tl torch {v['tl_onnx_over_tl_torch']:.2f}x")
    e = r.get("extract", {})
    if "tl_onnx_images_per_second" in e:
        B.log(f"cold extraction (cats_dogs): tl onnx {e['tl_onnx_images_per_second']:.1f}, tl torch {e['tl_torch_images_per_second']:.1f}, "
              f"PyTorch eager {e['pytorch_eager_images_per_second']:.1f} img/s -> {e['tl_onnx_over_tl_torch']:.2f}x tl torch, "
              f"{e['tl_onnx_over_pytorch_eager']:.2f}x PyTorch eager"
              + (f", {e['tl_onnx_over_python_ort_backbone_only']:.2f}x ORT backbone-only" if "tl_onnx_over_python_ort_backbone_only" in e else "")
              + (f" (rounds {', '.join(f'{r:.2f}' for r in e['per_round_over_python_ort_backbone_only'])}); one session fed by "
                 f"decoders {e['tl_onnx_decoders_images_per_second']:.1f} img/s -> workers {e['tl_onnx_over_one_session_with_decoders']:.2f}x"
                 if "tl_onnx_decoders_images_per_second" in e else ""))
    for name, seeds in r.get("accuracy", {}).items():
        if "skipped" in seeds:
            continue
        diffs = [abs(v["onnx"] - v["torch"]) for v in seeds.values()]
        B.log(f"{name}: " + ", ".join(f"seed {s} onnx {100 * v['onnx']:.2f}% torch {100 * v['torch']:.2f}%" for s, v in seeds.items())
              + f" (largest difference {100 * max(diffs):.2f} points)")


if __name__ == "__main__":
    sys.exit(main())
