#!/usr/bin/env python3
"""Issue #28 on this CPU (BENCHMARKS.md §22): tl's bf16/OpenVINO engine and Pillow-exact,
DCT-scaled JPEG decoding against what a Python user would write. Contenders alternated in
each round; medians.

  backbone  the backbone alone on ready tensors (batch 32, 2 threads): `tl bench` with its
            defaults (--engine auto --precision auto) against OpenVINO in Python with its
            defaults (PERFORMANCE_HINT=LATENCY; bf16 where the CPU has it) and ONNX Runtime,
            on the same ONNX file; MobileNetV2 (real weights) and ResNet50 (random weights:
            speed only)
  extract   cold extraction of the 1,300 cats_dogs photos, decoding included: `tl extract`
            (defaults) against torchvision ImageFolder + eval transform + DataLoader (0, 1, 2
            workers) feeding ONNX Runtime or OpenVINO (model compiled before the clock
            starts); OpenVINO's backbone-only rate measured in the same round, with its
            defaults (batch 32, 2 threads) and as tl's workers run it (2 one-thread models,
            4 images per call); tl with 32 images per engine call (TL_ENGINE_BATCH=32)
  large     200 photos of 4000x3000 (cats_dogs photos upscaled, JPEG q90): tl --decode draft
            (default; 1/8 by src/data/jpeg_eighth), the same with libjpeg at 1/8
            (TL_JPEG_EIGHTH=off), --decode full, and tl as it was before (the image crate,
            TL_LIBJPEG pointing nowhere; ONNX Runtime, 32 images per call), against PIL +
            Image.draft and PIL in full
  accuracy  val accuracy fp32 vs bf16 and full vs draft: cats_dogs (--val-split 0.5, seed 0)
            and pets (--val-split 0.5, seeds 0-2), and as controls fp32 on OpenVINO and
            libtorch (ONNX Runtime is fp32's default engine); the features cosine of tl's bf16 and fp32
            runs (--save-features, seed 0: every photo); the 200 large photos, --decode draft
            against full, by a head trained on the other 1,100 cats_dogs photos; features
            cosine of the plain export in bf16 (weights rounded to the nearest, what OpenVINO
            does by itself) against ONNX Runtime fp32 on the cats_dogs photos (inputs by PIL,
            equal to tl's: tests/parity.rs)

    scripts/bench/run.sh cpu [--rounds 3] [backbone extract large accuracy]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core as B  # noqa: E402

OUT = B.ROOT / "out" / "bench-cpu"
BB = B.ROOT / "backbones"
CATS_DOGS = B.DATA / "cats_dogs"
PETS = B.DATA / "pets"

PY_BACKBONE = """
import json, time, numpy as np
engine, path, threads, batches = {engine!r}, {path!r}, {threads}, {batches}
x = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
if engine == "openvino":
    import openvino as ov
    core = ov.Core()
    m = core.compile_model(core.read_model(path), "CPU", {{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}})
    run = lambda: m(x)
    extra = {{"precision": str(m.get_property("INFERENCE_PRECISION_HINT")), "version": ov.__version__}}
else:
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, {{"image": x}})
    extra = {{"version": ort.__version__}}
for _ in range(2): run()
t = time.perf_counter()
for _ in range(batches): run()
print(json.dumps({{"images_per_second": batches * 32 / (time.perf_counter() - t), **extra}}))
"""

# The backbone as tl's extraction workers run it, in Python: one one-thread OpenVINO model
# per worker, unpinned (pinned, both models' threads can land on one core), defaults
# otherwise (bf16 where the CPU has it), `batch` images per call.
PY_BACKBONE_WORKERS = """
import json, time, threading, numpy as np, openvino as ov
path, workers, batch, images = {path!r}, {workers}, {batch}, {images}
x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
core = ov.Core()
reqs = []
for _ in range(workers):
    m = core.compile_model(core.read_model(path), "CPU", {{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1,
                                                          "ENABLE_CPU_PINNING": False}})
    r = m.create_infer_request(); r.infer(x); r.infer(x); reqs.append(r)
calls = images // workers // batch
def work(r):
    for _ in range(calls): r.infer(x)
threads = [threading.Thread(target=work, args=(r,)) for r in reqs]
t = time.perf_counter()
for th in threads: th.start()
for th in threads: th.join()
print(json.dumps({{"images_per_second": calls * batch * workers / (time.perf_counter() - t)}}))
"""

PY_PIPELINE = """
import json, time, torch, numpy as np
from PIL import Image
from torchvision import datasets, transforms as T
engine, path, data, workers, threads, draft = {engine!r}, {path!r}, {data!r}, {workers}, {threads}, {draft}
torch.set_num_threads(1)
def load(p):
    im = Image.open(p)
    if draft:
        im.draft("RGB", (256, 256))
    return im.convert("RGB")
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
ds = datasets.ImageFolder(data, transform=tf, loader=load)
dl = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers)
if engine == "openvino":
    import openvino as ov
    core = ov.Core()
    m = core.compile_model(core.read_model(path), "CPU", {{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}})
    run = lambda x: m(x)
else:
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    run = lambda x: s.run(None, {{"image": x}})
t = time.perf_counter()
n = 0
for x, _ in dl:
    run(x.numpy()); n += len(x)
print(json.dumps({{"images_per_second": n / (time.perf_counter() - t), "images": n}}))
"""


def py(code: str, env: dict | None = None) -> dict:
    proc = subprocess.run([B.PY, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_flags() -> str:
    flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags)


def onnx_of(arch: str) -> str:
    return str(BB / f"{arch}.features.onnx")


def tl_bench(arch: str, batches: int) -> dict:
    _, proc = B.run_tl(["bench", "-b", arch, "--batches", str(batches), "--matmul-size", "0", "--json"])
    return json.loads(proc.stdout)


def bench_backbone(args) -> dict:
    out = {}
    for arch, batches in (("mobilenet_v2", 10), ("resnet50", 3)):
        if not (BB / f"{arch}.json").is_file():
            weights = ["--weights", "none"] if arch == "resnet50" else []
            subprocess.run([B.PY, str(B.ROOT / "scripts" / "export_backbones.py"), arch, *weights], check=True)
        runs = {"tl": [], "python_openvino": [], "python_ort": []}
        for i in range(args.rounds):
            rep = tl_bench(arch, batches)
            runs["tl"].append(rep["images_per_second"])
            for eng in ("openvino", "ort"):
                r = py(PY_BACKBONE.format(engine=eng, path=onnx_of(arch), threads=B.THREADS, batches=batches))
                runs[f"python_{eng}"].append(r["images_per_second"])
            B.log(f"  {arch} #{i + 1}: tl ({rep['engine']} {rep['precision']}) {runs['tl'][-1]:.1f}, "
                  f"Python OpenVINO {runs['python_openvino'][-1]:.1f}, Python ORT {runs['python_ort'][-1]:.1f} img/s")
        med = {k: B.median(v) for k, v in runs.items()}
        out[arch] = {"medians": med, "tl_engine": f"{rep['engine']} {rep['precision']}",
                     "tl_over_python_openvino": med["tl"] / med["python_openvino"], "runs": runs}
        B.log(f"{arch}: tl {med['tl']:.1f} img/s = {out[arch]['tl_over_python_openvino']:.3f}x OpenVINO's default")
    return out


def tl_extract(data: Path, extra: tuple[str, ...] = (), env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        old = dict(os.environ)
        os.environ.update(env or {})
        try:
            _, proc = B.run_tl([*extra, "extract", "-b", "mobilenet_v2", str(data), "--cache-dir", cache, "--json"])
        finally:
            os.environ.clear()
            os.environ.update(old)
    return json.loads(proc.stdout)["extraction"]


def pipelines(data: Path, draft: bool, engines=("ort", "openvino"), workers=(0, 1, 2)) -> dict:
    out = {}
    for eng in engines:
        for w in workers:
            r = py(PY_PIPELINE.format(engine=eng, path=onnx_of("mobilenet_v2"), data=str(data), workers=w,
                                      threads=B.THREADS, draft=draft))
            out[f"{eng}_w{w}"] = r["images_per_second"]
    return out


def bench_extract(args) -> dict:
    if not CATS_DOGS.is_dir():
        return {"skipped": f"{CATS_DOGS} not present"}
    runs = {"tl": [], "tl_engine_batch_32": [], "python_best": [], "openvino_backbone_only": [],
            "openvino_backbone_only_2x1_threads_batch_4": [], "python": []}
    for i in range(args.rounds):
        st = tl_extract(CATS_DOGS)
        runs["tl"].append(st["images_per_second"])
        runs["tl_engine_batch_32"].append(tl_extract(CATS_DOGS, env={"TL_ENGINE_BATCH": "32"})["images_per_second"])
        p = pipelines(CATS_DOGS, draft=False)
        runs["python"].append(p)
        runs["python_best"].append(max(p.values()))
        ov = py(PY_BACKBONE.format(engine="openvino", path=onnx_of("mobilenet_v2"), threads=B.THREADS, batches=10))
        runs["openvino_backbone_only"].append(ov["images_per_second"])
        ov = py(PY_BACKBONE_WORKERS.format(path=onnx_of("mobilenet_v2"), workers=2, batch=4, images=320))
        runs["openvino_backbone_only_2x1_threads_batch_4"].append(ov["images_per_second"])
        B.log(f"  cold #{i + 1}: tl ({st['engine']} {st.get('precision', '')}) {runs['tl'][-1]:.1f} img/s "
              f"(engine batch 32: {runs['tl_engine_batch_32'][-1]:.1f}); Python "
              + ", ".join(f"{k} {v:.1f}" for k, v in p.items())
              + f"; OpenVINO backbone only {runs['openvino_backbone_only'][-1]:.1f}, as tl's workers "
              f"(2 models x 1 thread, batch 4) {runs['openvino_backbone_only_2x1_threads_batch_4'][-1]:.1f}")
    med = {k: B.median(v) for k, v in runs.items() if k != "python"}
    return {"medians": med, "tl_over_best_python": med["tl"] / med["python_best"],
            "tl_over_openvino_backbone_only": med["tl"] / med["openvino_backbone_only"],
            "tl_over_openvino_backbone_only_as_tl_runs_it":
                med["tl"] / med["openvino_backbone_only_2x1_threads_batch_4"],
            "engine_batch_4_over_32": med["tl"] / med["tl_engine_batch_32"], "runs": runs}


LARGE_PER_CLASS = 100


def large_photos() -> Path:
    """200 photos of 4000x3000: the first 100 cats and 100 dogs, upscaled (bicubic), JPEG q90."""
    from PIL import Image
    root = OUT / f"large{2 * LARGE_PER_CLASS}"
    if (root / "done").is_file():
        return root
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((CATS_DOGS / cls).iterdir())[:LARGE_PER_CLASS]:
            Image.open(f).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(root / cls / f"{f.stem}.jpg", quality=90)
    (root / "done").write_text("ok")
    return root


def rest_of_cats_dogs(tmp: Path) -> Path:
    """cats_dogs without the photos the large ones were made from (symlinks)."""
    for cls in ("cat", "dog"):
        (tmp / "rest" / cls).mkdir(parents=True)
        for f in sorted((CATS_DOGS / cls).iterdir())[LARGE_PER_CLASS:]:
            (tmp / "rest" / cls / f.name).symlink_to(f.resolve())
    return tmp / "rest"


def large_accuracy(cache: str) -> dict:
    """A head trained on the other 1,100 cats_dogs photos (fp32, full decoding), then the
    200 large photos predicted with --decode full and draft, and their 200 originals."""
    large = large_photos()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = f"{tmp}/run"
        B.run_tl(["train", "-b", "mobilenet_v2", str(rest_of_cats_dogs(Path(tmp))), "--out", run, "-q",
                  "--precision", "fp32", "--decode", "full", "--cache-dir", cache])
        preds = {}
        for mode in ("full", "draft"):
            _, proc = B.run_tl(["--precision", "fp32", "--decode", mode, "predict", run, str(large), "--json", "-q"])
            preds[mode] = {Path(p["path"]["text"] if isinstance(p["path"], dict) else p["path"]).name: p
                           for p in json.loads(proc.stdout)["predictions"]}
            truth = {n: Path(p["path"]["text"] if isinstance(p["path"], dict) else p["path"]).parent.name
                     for n, p in preds[mode].items()}
            out[f"accuracy_{mode}"] = 100 * sum(p["top"][0]["class"] == truth[n] for n, p in preds[mode].items()) / len(truth)
        names = sorted(preds["full"])
        out["same_top1"] = sum(preds["full"][n]["top"][0]["class"] == preds["draft"][n]["top"][0]["class"] for n in names)
        out["max_probability_difference"] = max(abs(preds["full"][n]["top"][0]["probability"]
                                                    - preds["draft"][n]["top"][0]["probability"]) for n in names
                                                if preds["full"][n]["top"][0]["class"] == preds["draft"][n]["top"][0]["class"])
        out["images"] = len(names)
    return out


def bench_large(args) -> dict:
    if not CATS_DOGS.is_dir():
        return {"skipped": f"{CATS_DOGS} not present"}
    data = large_photos()
    runs = {"tl_draft": [], "tl_draft_libjpeg": [], "tl_full": [], "tl_before": [], "python_draft_best": [],
            "python_full_best": []}
    for i in range(args.rounds):
        runs["tl_draft"].append(tl_extract(data, ("--decode", "draft"))["images_per_second"])
        runs["tl_draft_libjpeg"].append(
            tl_extract(data, ("--decode", "draft"), {"TL_JPEG_EIGHTH": "off"})["images_per_second"])
        runs["tl_full"].append(tl_extract(data, ("--decode", "full"))["images_per_second"])
        before = tl_extract(data, ("--decode", "full", "--engine", "onnx"),
                            {"TL_LIBJPEG": "/nonexistent/libjpeg.so", "TL_ENGINE_BATCH": "32"})
        runs["tl_before"].append(before["images_per_second"])
        runs["python_draft_best"].append(max(pipelines(data, True, ("openvino",), (1, 2)).values()))
        runs["python_full_best"].append(max(pipelines(data, False, ("openvino",), (1, 2)).values()))
        B.log(f"  large #{i + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()) + " img/s")
    med = {k: B.median(v) for k, v in runs.items()}
    return {"medians": med, "draft_over_before": med["tl_draft"] / med["tl_before"],
            "eighth_decoder_over_libjpeg": med["tl_draft"] / med["tl_draft_libjpeg"],
            "draft_over_python_draft": med["tl_draft"] / med["python_draft_best"], "runs": runs}


def val_accuracy(data: Path, extra: tuple[str, ...], seed: int, cache: Path, save: Path | None = None) -> float:
    """Val accuracy of `tl train` (--val-split 0.5); `save`: its features too (--save-features)."""
    with tempfile.TemporaryDirectory() as tmp:
        more = ["--save-features", str(save)] if save else []
        B.run_tl([*extra, "train", "-b", "mobilenet_v2", str(data), "--val-split", "0.5", "--seed", str(seed),
                  "--out", f"{tmp}/run", "-q", "--cache-dir", str(cache), *more])
        rep = json.loads(Path(f"{tmp}/run/report.json").read_text())
    return 100 * rep["val_accuracy"]


def saved_features_cosine(a: Path, b: Path) -> dict:
    """Per-photo cosine between two `--save-features` files of the same split."""
    import numpy as np
    from safetensors.numpy import load_file
    x, y = load_file(str(a)), load_file(str(b))
    u = np.concatenate([x["train_x"], x["val_x"]]).astype(np.float64)
    v = np.concatenate([y["train_x"], y["val_x"]]).astype(np.float64)
    cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "share_at_least_0.998": float((cos >= 0.998).mean()),
            "images": len(cos)}


def features_cosine() -> dict:
    import numpy as np
    code = """
import json, numpy as np, openvino as ov, onnxruntime as ort
from PIL import Image
from pathlib import Path
from torchvision import transforms as T
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
files = sorted(p for c in ("cat", "dog") for p in (Path({data!r}) / c).iterdir())
core = ov.Core()
m = core.compile_model(core.read_model({path!r}), "CPU", {{"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "bf16"}})
s = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
cos = []
for i in range(0, len(files), 32):
    x = np.stack([tf(Image.open(f).convert("RGB")).numpy() for f in files[i:i + 32]])
    a = next(iter(m(x).values())); b = s.run(None, {{"image": x}})[0]
    cos += list((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
cos = np.array(cos)
print(json.dumps({{"mean": float(cos.mean()), "min": float(cos.min()), "share_at_least_0.998": float((cos >= 0.998).mean()), "images": len(cos)}}))
"""
    return py(code.format(data=str(CATS_DOGS), path=onnx_of("mobilenet_v2")))


def bench_accuracy(args) -> dict:
    out = {}
    settings = {"fp32_full": ("--precision", "fp32", "--decode", "full"),
                "fp32_draft": ("--precision", "fp32", "--decode", "draft"),
                "bf16_draft": ("--precision", "bf16", "--decode", "draft"),
                # controls: the same fp32 network on the other fp32 engines (features within a
                # cosine of 0.9999): how far accuracy moves when nothing but float rounding does
                "fp32_draft_openvino": ("--precision", "fp32", "--decode", "draft", "--engine", "openvino"),
                "fp32_draft_libtorch": ("--precision", "fp32", "--decode", "draft", "--engine", "torch")}
    with tempfile.TemporaryDirectory() as cache:
        for name, data, seeds in (("cats_dogs", CATS_DOGS, (0,)), ("pets", PETS, (0, 1, 2))):
            if not data.is_dir():
                out[name] = {"skipped": f"{data} not present"}
                continue
            saved = lambda k, s: Path(cache) / f"{name}-{k}-{s}.safetensors" if s == 0 else None  # noqa: E731
            out[name] = {k: [val_accuracy(data, v, s, Path(cache), saved(k, s)) for s in seeds]
                         for k, v in settings.items()}
            out[name]["features_cosine_bf16_vs_fp32"] = saved_features_cosine(saved("fp32_draft", 0),
                                                                              saved("bf16_draft", 0))
            B.log(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in out[name].items()))
        if CATS_DOGS.is_dir():
            out["large"] = large_accuracy(cache)
            B.log(f"  200 large photos (head trained on the other 1,100 photos, fp32): {out['large']}")
    out["features_cosine_nearest_bf16_vs_fp32"] = features_cosine()
    B.log("  features cosine, the plain export in bf16 (weights rounded to the nearest) vs ORT fp32, "
          f"cats_dogs: {out['features_cosine_nearest_bf16_vs_fp32']}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("parts", nargs="*", default=["backbone", "extract", "large", "accuracy"])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"cpu": cpu_flags(), "threads": B.THREADS, "date": time.strftime("%Y-%m-%d %H:%M")}
    B.log(f"CPU flags: {results['cpu']}; {B.THREADS} threads")
    _, proc = B.run_tl(["doctor"])
    B.log("\n".join(l for l in proc.stdout.splitlines() if l.split(":")[0] in ("OpenVINO", "ONNX Runtime", "CPU native bf16", "JPEG decoder", "engine")))
    for part in args.parts:
        B.log(f"== {part}")
        results[part] = {"backbone": bench_backbone, "extract": bench_extract, "large": bench_large,
                         "accuracy": bench_accuracy}[part](args)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    B.log(f"results: {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
