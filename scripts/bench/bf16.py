"""Groundwork for issue #28: MobileNetV2 (the shared real weights) traced and frozen as the
export does (channels-last), once in fp32 and once in bf16, on libtorch; and the eager model under
CPU autocast (bf16 where PyTorch deems it safe); and OpenVINO on the ONNX export when
`openvino` is installed (the section installs it), default settings and f32. Backbone-only speed
(batch 32, contenders alternated, medians), the features' cosine on the 1,300 cats_dogs photos
(PIL decode + torchvision's eval transform), and a linear probe (scikit-learn logistic
regression, C=1, on standardised features; 50/50 stratified split, seed 0) on each.

    scripts/bench/run.sh bf16 [--rounds 5] [--threads 2]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import export_backbones as eb  # noqa: E402


def cpu_flags() -> str:
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags)


def openvino_contenders(onnx: Path, threads: int) -> dict:
    """OpenVINO on the export's ONNX file, with its default settings (LATENCY: bf16 where the
    CPU has it) and forced to f32; none when openvino or the file is missing."""
    try:
        import openvino as ov
    except ImportError:
        print("openvino not installed: its contenders skipped")
        return {}
    if not onnx.is_file():
        print(f"{onnx} not found (scripts/demo.sh exports it): OpenVINO skipped")
        return {}
    core = ov.Core()
    out = {}
    for name, extra in (("openvino", {}), ("openvino-f32", {"INFERENCE_PRECISION_HINT": "f32"})):
        model = core.read_model(str(onnx))
        model.reshape([-1, 3, 224, 224])
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_NUM_THREADS": threads, **extra})
        print(f"OpenVINO {ov.__version__} {name}: inference precision "
              f"{compiled.get_property('INFERENCE_PRECISION_HINT')}")
        out[name] = (lambda c: lambda t: torch.from_numpy(
            next(iter(c(t.contiguous().numpy()).values())).copy()))(compiled)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default=str(ROOT.parent / "shared/models/mobilenet_v2-imagenet.safetensors"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/cats_dogs"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx", default=str(ROOT / "backbones/mobilenet_v2.features.onnx"))
    args = ap.parse_args()
    if not Path(args.weights).is_file() or not Path(args.data).is_dir():
        print("bench bf16: the shared weights or photos are not present, skipped")
        return 0
    torch.set_num_threads(args.threads)
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {args.threads} threads")
    model, *_ = eb.build_model("mobilenet_v2", args.weights, None)
    body = eb.feature_extractor("mobilenet_v2", model).eval()
    x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    fp32 = eb.trace_frozen(body, x)
    wrapped = eb.ChannelsLast(body).eval().to(memory_format=torch.channels_last).to(torch.bfloat16)
    with torch.no_grad():
        bf16 = torch.jit.freeze(torch.jit.trace(wrapped, x.to(torch.bfloat16), check_trace=False).eval())
    eager = body.to(memory_format=torch.channels_last)

    def autocast(t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return eager(t).float()

    run = {"fp32": lambda t: fp32(t), "bf16": lambda t: bf16(t.to(torch.bfloat16)).float(),
           "autocast": autocast}
    run.update(openvino_contenders(Path(args.onnx), args.threads))
    times = {k: [] for k in run}
    with torch.no_grad():
        for f in run.values():
            f(x)
        for _ in range(args.rounds):
            for k, f in run.items():
                t = time.perf_counter()
                f(x)
                times[k].append(time.perf_counter() - t)
    rate = {k: 32 / float(np.median(v)) for k, v in times.items()}
    print(f"backbone only, batch 32, median of {args.rounds} alternated rounds (x: against libtorch fp32):")
    for k, r in rate.items():
        print(f"  {k:<13} {r:6.1f} img/s  {r / rate['fp32']:.2f}x")

    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize(eb.IMAGENET_MEAN, eb.IMAGENET_STD)])
    classes = sorted(p.name for p in Path(args.data).iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((Path(args.data) / c).iterdir())]
    feats = {k: [] for k in run}
    labels = np.array([y for _, y in files])
    with torch.no_grad():
        for i in range(0, len(files), 32):
            batch = torch.stack([tf(Image.open(f).convert("RGB")) for f, _ in files[i:i + 32]])
            batch = batch.contiguous(memory_format=torch.channels_last)
            for k, f in run.items():
                feats[k].append(f(batch))
    a = torch.cat(feats["fp32"])
    for k in [k for k in run if k != "fp32"]:
        cos = torch.nn.functional.cosine_similarity(a, torch.cat(feats[k]))
        print(f"features of {len(files)} photos, {k} against fp32: cosine min {cos.min():.5f}, "
              f"mean {cos.mean():.5f}, below 0.998: {int((cos < 0.998).sum())}")

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler
    idx = np.arange(len(files))
    tr, te = train_test_split(idx, test_size=0.5, stratify=labels, random_state=0)
    for k in run:
        x_all = torch.cat(feats[k]).numpy()
        scaler = StandardScaler().fit(x_all[tr])
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x_all[tr]), labels[tr])
        acc = clf.score(scaler.transform(x_all[te]), labels[te])
        print(f"linear probe on {k} features: {100 * acc:.2f}% of {len(te)} held-out photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
