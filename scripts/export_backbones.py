#!/usr/bin/env python3
"""Export torchvision classifiers as TorchScript backbones for `tl`.

For each model name this writes, into the backbones folder:

  NAME.features.pt    [N,3,H,W] float (normalised) -> [N,D] features
  NAME.classifier.pt  [N,3,H,W] float (normalised) -> [N,C] logits
  NAME.json           sidecar: architecture, feature dim, preprocessing, class names,
                      weights provenance, fine-tuning cut points and the sha256 of every file
  NAME.trunkN.pt      for each cut N (--cuts): everything below the last N blocks, frozen
                      like the feature extractor; [N,3,H,W] -> [N,C,h,w] (its output is cached)
  NAME.topN.pt        the last N blocks and the pooling, scripted with their parameters so
                      that `tl train --finetune N` can train them; [N,C,h,w] -> [N,D]
  NAME.topall.pt      (cut `all`) the whole feature extractor, trainable; [N,3,H,W] -> [N,D]
  NAME.layers.pt      [N,3,H,W] float (normalised) -> the output of every block, bottom to
                      top, as a tuple (for `tl dream --layer NAME --channel C` and `--batch`'s
                      diversity term); names and channels in the sidecar's "layers"
  NAME.features.onnx  the feature extractor and the classifier as ONNX (opset 17, dynamic
  NAME.classifier.onnx  batch), from the eager model, for `tl --engine onnx`; checked in ONNX
                      Runtime against eager when it is installed (--no-onnx: not written)
  NAME.last_layer.onnx  the last block's output [N,C,h,w], for `tl explain`'s CAM on ONNX Runtime
  NAME.features.bf16.onnx  the feature extractor for OpenVINO's bf16 (`tl --precision bf16`): the
                      weights of the layers that bf16 rounding would spoil (measured on generated
                      images) rounded to bf16 by calibration instead of to the nearest value
                      (--bf16-layers); not written when no layer needs it (the sidecar then
                      names NAME.features.onnx)
  NAME.linear.safetensors  the classifier's last layer (features -> logits), for `tl explain
                      --backbone`

Blocks, counted from the top: MobileNetV2's final 1x1 conv and its inverted-residual blocks;
ResNet's bottlenecks (layer4, then layer3, ...); VGG's conv layers (each with its ReLU and any
max-pool after it). The trainable tops keep BatchNorm layers as modules (eval mode in `tl`,
so their running statistics stay frozen); top(trunk(x)) is checked against the eager model.

Both TorchScript files are traced, frozen (`torch.jit.freeze` folds BatchNorm into the
convolutions) and hold channels-last weights; the traced graph converts its input to
channels-last itself, so callers pass ordinary contiguous tensors. Every export is checked
against the eager model before it is written, and the saved file is re-loaded and checked
again.

Weights:
  --weights imagenet[:ENUM]  torchvision download (needs internet); ENUM defaults to DEFAULT
  --weights none             random initialisation (offline; marked as such in the sidecar)
  --weights FILE             a local torchvision state_dict (.pth/.pt or .safetensors)

The architecture `tiny` is a small seeded conv net used by the test-suite.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TINY_CLASSES = [
    "tench", "goldfish", "tabby", "tiger cat", "Persian cat",
    "Siamese cat", "Egyptian cat", "golden retriever", "zebra", "espresso",
]
SIDECAR_FORMAT = "tl-backbone/1"
# Cut points written by default: the top 1-3 blocks (`tl train --finetune N`; 2 is tl's
# default N) and the whole network (`--finetune all`).
DEFAULT_CUTS = [1, 2, 3, "all"]


class ExportError(Exception):
    """A problem the user can fix; printed as one line."""


DOWNLOAD_FAILED = 3


class DownloadError(ExportError):
    """The weights could not be downloaded (exit status 3; tl then says which file to hand over)."""

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Tiny(nn.Module):
    """A deliberately small conv net: fast enough for unit tests on two cores."""

    def __init__(self, num_classes: int = len(TINY_CLASSES)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Top(nn.Module):
    """The trainable top of a backbone: the last blocks, then pooling and flattening."""

    def __init__(self, blocks: list, tail: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.tail = tail

    def forward(self, x):
        return self.tail(self.blocks(x))


class PoolFlatten(nn.Module):
    """Global average pooling and flattening (MobileNetV2, ResNet, tiny)."""

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class AvgPoolFlatten(nn.Module):
    """VGG's adaptive 7x7 average pooling, flattened."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x):
        return torch.flatten(self.pool(x), 1)


def split_blocks(arch: str, model: nn.Module) -> tuple[list, list, nn.Module]:
    """(names, blocks, tail): the feature extractor as a chain of blocks plus pooling."""
    if arch == "tiny":
        f = model.features
        blocks = [nn.Sequential(*f[0:3]), nn.Sequential(*f[3:6]), nn.Sequential(*f[6:8])]
        return ["features.0-2", "features.3-5", "features.6-7"], blocks, PoolFlatten()
    if arch.startswith("mobilenet_v2"):
        names = [f"features.{i}" for i in range(len(model.features))]
        return names, list(model.features), PoolFlatten()
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        names, blocks = ["stem"], [stem]
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            for i, block in enumerate(getattr(model, layer)):
                names.append(f"{layer}.{i}")
                blocks.append(block)
        return names, blocks, PoolFlatten()
    if arch.startswith("vgg"):
        layers = list(model.features)
        names, blocks, current, start = [], [], [], 0
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d) and current:
                names.append(f"features.{start}-{i - 1}")
                blocks.append(nn.Sequential(*current))
                current, start = [], i
            current.append(layer)
        names.append(f"features.{start}-{len(layers) - 1}")
        blocks.append(nn.Sequential(*current))
        return names, blocks, AvgPoolFlatten(model.avgpool)
    raise ExportError(f"no fine-tuning blocks defined for '{arch}' (use --cuts none)")


def parse_bf16_layers(text: str) -> list | None:
    """--bf16-layers: None for auto, [] for none, else layer numbers."""
    if text == "auto":
        return None
    if text == "none":
        return []
    try:
        return sorted({int(t) for t in text.split(",")})
    except ValueError:
        raise ValueError(f"--bf16-layers: expected auto, none or layer numbers like 1,5; got '{text}'") from None


def parse_cuts(text: str) -> list:
    """'1,2,4,all' -> [1, 2, 4, 'all']; 'none' -> []."""
    if text.strip() == "none":
        return []
    cuts = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            cuts.append("all")
        elif part.isdigit() and int(part) > 0:
            cuts.append(int(part))
        else:
            raise ExportError(f"--cuts: '{part}' is not a positive number of blocks or 'all'")
    return cuts


class ChannelsLast(nn.Module):
    """Converts the input to channels-last so the frozen channels-last convolutions run fast."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x.contiguous(memory_format=torch.channels_last))


class VggFeatures(nn.Module):
    """VGG's pooled conv features, flattened: 512*7*7 = 25088 for a 224 input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features = model.features
        self.avgpool = model.avgpool

    def forward(self, x):
        return torch.flatten(self.avgpool(self.features(x)), 1)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ExportError("model has no nn.Linear classifier layer to cut off")
    return found


def set_submodule(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def feature_extractor(arch: str, model: nn.Module) -> nn.Module:
    """The backbone without its final classifier layer."""
    import copy

    if arch.startswith("vgg"):
        return VggFeatures(model)
    body = copy.deepcopy(model)
    name, _ = last_linear(body)
    set_submodule(body, name, nn.Identity())
    return body


def build_model(arch: str, weights: str, num_classes: int | None):
    """Returns (model, weights_info, resize, crop, class_names)."""
    resize, crop = 256, 224
    if arch == "tiny":
        torch.manual_seed(0)
        model = Tiny()
        with torch.no_grad():  # non-trivial BatchNorm statistics so that freezing is exercised
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
            # Random init gives near-constant logits; scale them so tests can move them.
            model.classifier.weight.mul_(40.0)
        return model.eval(), {"source": "tiny-seeded", "pretrained": False, "sha256": None}, resize, crop, TINY_CLASSES

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ExportError(f"unknown torchvision classification model '{arch}' (try one of: vgg16, resnet50, mobilenet_v2, ...)")
    categories = list(torchvision.models._meta._IMAGENET_CATEGORIES)

    if weights == "none":
        model = torchvision.models.get_model(arch, weights=None)
        info = {"source": "none", "pretrained": False, "sha256": None,
                "note": "random initialisation: for shapes and speed only, not for accuracy"}
    elif weights == "imagenet" or weights.startswith("imagenet:"):
        enum_name = weights.split(":", 1)[1] if ":" in weights else "DEFAULT"
        weights_enum = torchvision.models.get_model_weights(arch)[enum_name] if enum_name != "DEFAULT" \
            else torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = torchvision.models.get_model(arch, weights=weights_enum)
        except Exception as exc:  # network failures come in many types
            raise DownloadError(f"could not download {weights_enum.url} ({arch} {weights_enum}): {exc}; "
                                "offline, use --weights FILE with that file (a torchvision state_dict)",
                                weights_enum.url) from None
        transform = weights_enum.transforms()
        resize = int(transform.resize_size[0])
        crop = int(transform.crop_size[0])
        categories = list(weights_enum.meta["categories"])
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
        info = {"source": "imagenet", "pretrained": True, "torchvision_weights": str(weights_enum),
                "url": weights_enum.url, "sha256": sha256_file(cached) if cached.exists() else None}
    else:
        path = Path(weights)
        if not path.is_file():
            raise ExportError(f"{path}: weights file not found")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
                for key in ("state_dict", "model"):
                    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                        state = state[key]
        except Exception as exc:
            raise ExportError(f"{path}: cannot read weights: {exc}") from None
        model = torchvision.models.get_model(arch, weights=None)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ExportError(f"{path}: not a state_dict for torchvision {arch}: {first}") from None
        info = {"source": "file", "pretrained": True, "file": str(path.resolve()), "sha256": sha256_file(path)}
    if num_classes is not None and num_classes != len(categories):
        raise ExportError(f"--num-classes {num_classes} does not match the {len(categories)} class names")
    return model.eval(), info, resize, crop, categories


def trace_frozen(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    wrapped = ChannelsLast(module).eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, example, check_trace=False)
    return torch.jit.freeze(traced.eval())


def check_close(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    scale = float(want.abs().max()) + 1e-6
    err = float((got - want).abs().max()) / scale
    if got.shape != want.shape or err > 1e-3:
        raise ExportError(f"{name}: exported output differs from eager (relative error {err:.2e}, shapes {tuple(got.shape)} vs {tuple(want.shape)})")
    return err


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_atomic_module(module: torch.jit.ScriptModule, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        torch.jit.save(module, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: Path, value) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _umask_mode())
    with os.fdopen(fd, "w") as handle:
        json.dump(value, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


ONNX_OPSET = 17


def export_onnx(module: nn.Module, example: torch.Tensor, want: torch.Tensor, path: Path) -> dict | None:
    """`module` (eager) as ONNX with a dynamic batch, checked in ONNX Runtime against eager
    when it is installed. None (nothing written) without the onnx package."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        print(f"  {path.name}: skipped (the onnx package is not installed)", file=sys.stderr)
        return None
    import warnings
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (example,), tmp, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=["output"],
                              dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}})
        err = None
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {"image": example.numpy()})[0])
            err = check_close(f"{path} (ONNX Runtime)", got, want)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"file": path.name, "sha256": sha256_file(path), "opset": ONNX_OPSET,
            "max_relative_error_vs_eager": err}


# bf16-aware weights (`NAME.features.bf16.onnx`, for OpenVINO's bf16 on the CPU). bf16 keeps 8
# bits of mantissa: where a layer's output is a small difference of large products, rounding its
# weights to the nearest bf16 spoils the features (MobileNetV2's first depthwise convolution,
# weights up to 15 after BatchNorm folding, alone causes 79 % of the features' weight-rounding
# error). For such layers each weight is rounded up or down - whichever of its two bf16
# neighbours - so that the layer's output error on calibration inputs is smallest (the error of
# output channel o is d_o' C d_o, d_o its weights' rounding errors, C the covariance of its input
# patches; minimised by coordinate descent). The weights are then exact in bf16: OpenVINO keeps
# them as they are, and the network runs as fast as with nearest rounding (same graph, same
# kernels). On the 1,300 cats_dogs photos, MobileNetV2's bf16 features moved from a mean cosine
# of 0.9980 to fp32 to 0.9996 (BENCHMARKS.md section 22). Splitting the layer into two bf16
# convolutions (hi + lo) did as well but ran 7-10 % slower; keeping it in f32 (OpenVINO's
# DisablePrecisionConversion) 8 %.
BF16_CALIBRATION_IMAGES = 8
BF16_SHARE = 0.05  # re-round a layer whose nearest rounding alone causes >= 5 % of the whole error
BF16_MAX_LAYERS = 8
BF16_MIN_ERROR = 1e-4  # below this (1 - mean cosine) nothing is worth re-rounding
BF16_MAX_FAN_IN = 4608  # the input covariance is fan_in^2 doubles (VGG's fc6, 25088, is left alone)
BF16_MAX_PATCHES = 50000


def to_bf16(a):
    """Round float32 values to the nearest bf16 (ties to even), as float32."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return bits.astype(np.uint32).view(np.float32)


def bf16_other_neighbour(w, near):
    """The bf16 value on the other side of `w` from `near` (its nearest bf16)."""
    bits = near.view(np.uint32)
    away = (bits + np.uint32(0x10000)).view(np.float32)  # one bf16 step further from zero
    toward = (bits - np.uint32(0x10000)).view(np.float32)
    other = np.where((w > near) == (near > 0), away, toward)
    return np.where((near == 0) | (w == near), near, other)


def calibration_images(n: int, size: int):
    """Deterministic natural-looking images (smooth noise at five scales), normalised."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.zeros(n, 3, size, size)
    for s in (4, 8, 16, 32, 64):
        noise = torch.rand(n, 3, s, s, generator=g)
        imgs += nn.functional.interpolate(noise, size=size, mode="bilinear", align_corners=False) / s ** 0.5
    lo, hi = imgs.amin((1, 2, 3), keepdim=True), imgs.amax((1, 2, 3), keepdim=True)
    imgs = (imgs - lo) / (hi - lo)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((imgs - mean) / std).numpy()


def mean_cosine(a, b) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)))


def weighted_layers(model) -> list:
    """2-D Conv, Gemm and MatMul nodes whose weight is an initializer, in graph order."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node
            if len(n.input) > 1 and n.input[1] in inits
            and (n.op_type in ("Gemm", "MatMul") and len(inits[n.input[1]].dims) == 2
                 or n.op_type == "Conv" and len(inits[n.input[1]].dims) == 4)]


def onnx_attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def layer_groups(node, w, x):
    """The layer as groups of (rows of weights [O, fan_in], input patches [P, fan_in]):
    y[:, o] = patches @ rows[o] (+ bias) for each output o of a group. `w` is the weight
    initializer, `x` the layer's input on the calibration images. Returns the groups and a
    function that puts re-rounded rows back into the initializer's layout."""
    a = onnx_attrs(node)
    if node.op_type == "Conv":
        groups = int(a.get("group", 1))
        kh, kw = w.shape[2], w.shape[3]
        pads = list(a.get("pads", [0, 0, 0, 0]))
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        t = nn.functional.pad(t, (pads[1], pads[3], pads[0], pads[2]))
        cin = w.shape[1]
        out = []
        for g in range(groups):
            cols = nn.functional.unfold(t[:, g * cin:(g + 1) * cin], (kh, kw),
                                        dilation=tuple(a.get("dilations", [1, 1])),
                                        stride=tuple(a.get("strides", [1, 1])))
            patches = cols.transpose(1, 2).reshape(-1, cin * kh * kw).numpy()
            rows = w[g * (w.shape[0] // groups):(g + 1) * (w.shape[0] // groups)].reshape(-1, cin * kh * kw)
            out.append((rows, patches))
        return out, lambda rows: np.concatenate(rows).reshape(w.shape)
    x2 = x.reshape(-1, x.shape[-1])
    if node.op_type == "Gemm" and int(a.get("transA", 0)):
        x2 = x.T
    if node.op_type == "Gemm" and int(a.get("transB", 0)):
        return [(w, x2)], lambda rows: rows[0]
    return [(w.T, x2)], lambda rows: np.ascontiguousarray(rows[0].T)


def round_rows(rows, patches):
    """bf16 values for `rows` [O, n] (all sharing input `patches` [P, n]) that minimise each
    row's output error on the patches: coordinate descent over the choice of bf16 neighbour,
    from the nearest rounding. Returns (values, error before, error after), errors summed."""
    if len(patches) > BF16_MAX_PATCHES:
        pick = np.random.default_rng(0).choice(len(patches), BF16_MAX_PATCHES, replace=False)
        patches = patches[pick]
    p = patches.astype(np.float64)
    cov = p.T @ p / max(len(p), 1)
    w = rows.astype(np.float32)
    cur = to_bf16(w)
    alt = bf16_other_neighbour(w, cur)
    d = cur.astype(np.float64) - w
    grad = d @ cov  # [O, n]: cov @ d for each row
    before = float(np.einsum("on,on->", d, grad))
    for _ in range(8):
        changed = False
        for k in range(w.shape[1]):
            step = alt[:, k].astype(np.float64) - cur[:, k]
            gain = 2 * step * grad[:, k] + step * step * cov[k, k]
            flip = gain < -1e-30
            if flip.any():
                grad[flip] += np.outer(step[flip], cov[k])
                cur[flip, k], alt[flip, k] = alt[flip, k], cur[flip, k].copy()
                changed = True
        if not changed:
            break
    d = cur.astype(np.float64) - w
    return cur, before, float(np.einsum("on,nm,om->", d, cov, d))


class Bf16Plan:
    """Measures, in ONNX Runtime (fp32 arithmetic, so the same on every CPU), the features'
    mean cosine to exact with weights rounded to bf16, and re-rounds the layers that need it."""

    def __init__(self, model, x):
        import onnxruntime as ort
        from onnx import numpy_helper
        self.ort, self.numpy_helper = ort, numpy_helper
        self.model, self.x = model, x
        self.inits = {i.name: i for i in model.graph.initializer}
        self.layers = weighted_layers(model)
        self.exact = {n.input[1]: numpy_helper.to_array(self.inits[n.input[1]]) for n in self.layers}
        self.want = self.features({})

    def features(self, weights: dict, extra_outputs: tuple = ()):
        """The features (and any named intermediate tensors) with `weights` swapped in."""
        from onnx import helper
        for name, value in weights.items():
            self.inits[name].CopyFrom(self.numpy_helper.from_array(value, name))
        added = [helper.make_tensor_value_info(t, 1, None) for t in extra_outputs]
        self.model.graph.output.extend(added)
        try:
            options = self.ort.SessionOptions()
            options.log_severity_level = 3
            session = self.ort.InferenceSession(self.model.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
            names = [session.get_outputs()[0].name, *extra_outputs]
            return session.run(names, {session.get_inputs()[0].name: self.x})
        finally:
            for _ in added:
                self.model.graph.output.pop()
            for name in weights:
                self.inits[name].CopyFrom(self.numpy_helper.from_array(self.exact[name], name))

    def error(self, weights: dict) -> float:
        return 1 - mean_cosine(self.features(weights)[0], self.want[0])

    def nearest(self, nodes) -> dict:
        return {n.input[1]: to_bf16(self.exact[n.input[1]]) for n in nodes}

    def choose(self, force: list | None, total: float) -> list:
        """The layers to re-round: `force` (numbers in graph order), or those whose nearest
        rounding alone causes a large share of `total`, the error of rounding them all."""
        if force is not None:
            if any(not 0 <= i < len(self.layers) for i in force):
                raise ExportError(f"--bf16-layers: layer numbers must be below {len(self.layers)}")
            return [self.layers[i] for i in force]
        if total < BF16_MIN_ERROR:
            return []
        fits = [n for n in self.layers if self.exact[n.input[1]][0].size <= BF16_MAX_FAN_IN]
        alone = sorted(((self.error(self.nearest([n])), i) for i, n in enumerate(fits)), reverse=True)
        return [fits[i] for err, i in alone[:BF16_MAX_LAYERS] if err >= BF16_SHARE * total]

    def reround(self, nodes) -> dict:
        """Calibrated bf16 weights for `nodes`, from their inputs on the calibration images."""
        inputs = self.features({}, tuple(n.input[0] for n in nodes))[1:]
        out = {}
        for node, x in zip(nodes, inputs):
            w = self.exact[node.input[1]]
            groups, back = layer_groups(node, w, x)
            out[node.input[1]] = back([round_rows(rows, patches)[0] for rows, patches in groups])
        return out


def export_bf16(features_onnx: dict | None, out_dir: Path, name: str, crop: int,
                force: list | None = None) -> dict | None:
    """The feature extractor for OpenVINO's bf16: NAME.features.bf16.onnx, its sensitive layers'
    weights re-rounded (see above); the plain export when no layer needs it. None without
    onnxruntime (the plan is measured in it)."""
    if not features_onnx:
        return None
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError:
        print(f"  {name}.features.bf16.onnx: skipped (onnxruntime is not installed)", file=sys.stderr)
        return None
    src = out_dir / features_onnx["file"]
    model = onnx.load(str(src))
    plan = Bf16Plan(model, calibration_images(BF16_CALIBRATION_IMAGES, crop))
    nearest = plan.nearest(plan.layers)
    nearest_error = plan.error(nearest)
    chosen = plan.choose(force, nearest_error)
    rerounded = plan.reround(chosen) if chosen else {}
    record = {
        "rerounded": [n.name for n in chosen],
        "rerounded_index": [plan.layers.index(n) for n in chosen],
        "layers": len(plan.layers),
        "calibration_images": len(plan.x),
        "features_cosine_weights_in_bf16": {"nearest": 1 - nearest_error,
                                            "calibrated": 1 - plan.error({**nearest, **rerounded})},
    }
    if not chosen:
        return {**record, "file": features_onnx["file"], "sha256": features_onnx["sha256"]}
    for key, value in rerounded.items():
        plan.inits[key].CopyFrom(onnx.numpy_helper.from_array(value, key))
    path = out_dir / f"{name}.features.bf16.onnx"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, _umask_mode())
    try:
        onnx.save(model, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {**record, "file": path.name, "sha256": sha256_file(path)}


class Layers(nn.Module):
    """Every block's output, bottom to top."""

    def __init__(self, blocks: list):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return tuple(outs)


def export_layers(arch: str, model: nn.Module, name: str, out_dir: Path,
                  example: torch.Tensor) -> dict | None:
    """Write NAME.layers.pt (frozen, like the feature extractor); returns its sidecar entry."""
    import copy

    try:
        names, blocks, _ = split_blocks(arch, model)
    except ExportError:
        return None
    layers = Layers(copy.deepcopy(blocks)).eval()
    traced = trace_frozen(layers, example)
    path = out_dir / f"{name}.layers.pt"
    with torch.no_grad():
        want = layers(example)
        for layer, got, ref in zip(names, traced(example), want):
            check_close(f"{name} layer {layer}", got, ref)
        save_atomic_module(traced, path)
        for layer, got, ref in zip(names, torch.jit.load(str(path))(example), want):
            check_close(f"{path} layer {layer}", got, ref)
    return {"file": path.name, "sha256": sha256_file(path), "names": names,
            "channels": [int(t.shape[1]) for t in want],
            "sizes": [list(t.shape[2:]) for t in want]}


def export_linear(model: nn.Module, name: str, out_dir: Path, feature_dim: int) -> dict | None:
    """Write NAME.linear.safetensors: the classifier's last layer (`weight` [classes, features],
    `bias` [classes]), which maps the feature extractor's output to the logits — what
    `tl explain --backbone` maps the ImageNet classes through. None if it does not fit."""
    from safetensors.torch import save_file
    _, linear = last_linear(model)
    if linear.in_features != feature_dim:
        return None
    path = out_dir / f"{name}.linear.safetensors"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"weight": linear.weight.detach().float().contiguous(),
                   "bias": linear.bias.detach().float().contiguous()}, tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"file": path.name, "sha256": sha256_file(path)}


def cut_files(name: str, cut) -> tuple[str | None, str]:
    """(trunk file, top file) names of a cut."""
    if cut == "all":
        return None, f"{name}.topall.pt"
    return f"{name}.trunk{cut}.pt", f"{name}.top{cut}.pt"


def export_cuts(arch: str, model: nn.Module, name: str, out_dir: Path, cuts: list,
                example: torch.Tensor, want_feats: torch.Tensor) -> tuple[list, list]:
    """Write each cut's frozen trunk and trainable top; returns (block names, sidecar entries)."""
    import copy

    if not cuts:
        return [], []
    try:
        names, blocks, tail = split_blocks(arch, model)
    except ExportError:
        if cuts is DEFAULT_CUTS:  # an architecture without known blocks: no cuts by default
            return [], []
        raise
    total = len(blocks)
    if cuts is DEFAULT_CUTS:  # small networks (tiny) have fewer blocks than the defaults
        cuts = [c for c in cuts if c == "all" or c < total]
    entries = []
    for cut in cuts:
        n = total if cut == "all" else cut
        if n > total or (cut != "all" and n == total):
            raise ExportError(f"--cuts {cut}: {arch} has {total} blocks (use 1..{total - 1}, or all)")
        trunk_name, top_name = cut_files(name, cut)
        top = Top(copy.deepcopy(blocks[total - n:]), copy.deepcopy(tail)).eval()
        top_ts = torch.jit.script(top)
        entry = {"blocks": n, "first_block": names[total - n], "top_file": top_name,
                 "top_parameters": sum(p.numel() for p in top.parameters())}
        with torch.no_grad():
            if trunk_name is None:
                trunk_out = example
            else:
                trunk = nn.Sequential(*copy.deepcopy(blocks[:total - n])).eval()
                trunk_ts = trace_frozen(trunk, example)
                trunk_out = trunk_ts(example)
                save_atomic_module(trunk_ts, out_dir / trunk_name)
                entry["trunk_file"] = trunk_name
                entry["trunk_sha256"] = sha256_file(out_dir / trunk_name)
                entry["trunk_shape"] = list(trunk_out.shape[1:])
            check_close(f"{name} cut {cut} (top after trunk)", top_ts(trunk_out), want_feats)
        save_atomic_module(top_ts, out_dir / top_name)
        with torch.no_grad():
            check_close(f"{out_dir / top_name}", torch.jit.load(str(out_dir / top_name))(trunk_out), want_feats)
        entry["top_sha256"] = sha256_file(out_dir / top_name)
        entries.append(entry)
    return names, entries


def export(arch: str, weights: str, out_dir: Path, name: str | None = None, force: bool = False,
           check_batch: int = 2, cuts: list | None = None, onnx: bool = True,
           bf16_layers: list | None = None) -> Path:
    name = name or arch
    cuts = DEFAULT_CUTS if cuts is None else cuts
    out_dir.mkdir(parents=True, exist_ok=True)
    sidecar_path = out_dir / f"{name}.json"
    features_path = out_dir / f"{name}.features.pt"
    classifier_path = out_dir / f"{name}.classifier.pt"
    if not force:
        extra = [out_dir / f for cut in cuts for f in cut_files(name, cut) if f]
        extra.append(out_dir / f"{name}.layers.pt")
        extra.append(out_dir / f"{name}.linear.safetensors")
        if onnx:
            extra += [out_dir / f"{name}.features.onnx", out_dir / f"{name}.classifier.onnx",
                      out_dir / f"{name}.last_layer.onnx", out_dir / f"{name}.features.bf16.onnx"]
        for path in (sidecar_path, features_path, classifier_path, *extra):
            if path.exists():
                raise ExportError(f"{path}: already exists (use --force to overwrite)")

    model, info, resize, crop, classes = build_model(arch, weights, None)
    generator = torch.Generator().manual_seed(1234)
    example = torch.randn(check_batch, 3, crop, crop, generator=generator)

    features_eager = feature_extractor(arch, model).eval()
    with torch.no_grad():
        want_logits = model(example)
        want_feats = features_eager(example)
    feature_dim = int(want_feats.shape[1])

    features_ts = trace_frozen(features_eager, example)
    classifier_ts = trace_frozen(model, example)
    with torch.no_grad():
        errs = {
            "features": check_close(f"{name} features", features_ts(example), want_feats),
            "classifier": check_close(f"{name} classifier", classifier_ts(example), want_logits),
        }
    save_atomic_module(features_ts, features_path)
    save_atomic_module(classifier_ts, classifier_path)
    with torch.no_grad():  # the reloaded files must give the same numbers
        check_close(f"{features_path}", torch.jit.load(str(features_path))(example), want_feats)
        check_close(f"{classifier_path}", torch.jit.load(str(classifier_path))(example), want_logits)
    block_names, cut_entries = export_cuts(arch, model, name, out_dir, cuts, example, want_feats)
    layers = export_layers(arch, model, name, out_dir, example)
    # The same networks for ONNX Runtime (`tl --engine onnx`), from the eager model.
    onnx_files = {}
    if onnx:
        onnx_files = {
            "features": export_onnx(features_eager, example, want_feats, out_dir / f"{name}.features.onnx"),
            "classifier": export_onnx(model, example, want_logits, out_dir / f"{name}.classifier.onnx"),
        }
        if layers:
            # The last block's output alone: `tl explain` takes CAM's maps from it on ONNX Runtime.
            import copy
            _, blocks, _ = split_blocks(arch, model)
            last = nn.Sequential(*copy.deepcopy(blocks)).eval()
            with torch.no_grad():
                want_last = last(example)
            onnx_files["last_layer"] = export_onnx(last, example, want_last,
                                                   out_dir / f"{name}.last_layer.onnx")
        onnx_files["features_bf16"] = export_bf16(onnx_files["features"], out_dir, name, crop, bf16_layers)

    sidecar = {
        "format": SIDECAR_FORMAT,
        "name": name,
        "architecture": arch,
        "feature_dim": feature_dim,
        "num_classes": len(classes),
        "input_size": crop,
        "resize_size": resize,
        "crop_size": crop,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "class_names": classes,
        "weights": info,
        "features_file": features_path.name,
        "features_sha256": sha256_file(features_path),
        "classifier_file": classifier_path.name,
        "classifier_sha256": sha256_file(classifier_path),
        "blocks": block_names,
        "cuts": cut_entries,
        "onnx": {k: v for k, v in onnx_files.items() if v},
        "layers": layers,
        "linear": export_linear(model, name, out_dir, feature_dim),
        "frozen": True,
        "channels_last": True,
        "max_relative_error_vs_eager": max(errs.values()),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(sidecar_path, sidecar)
    return sidecar_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("models", nargs="+", help="torchvision model names (vgg16 resnet50 mobilenet_v2 ...) or 'tiny'")
    parser.add_argument("--weights", default="imagenet", help="imagenet[:ENUM] | none | FILE (default: imagenet)")
    parser.add_argument("--out", default=os.environ.get("TL_BACKBONES", "backbones"), help="backbones folder (default: $TL_BACKBONES or ./backbones)")
    parser.add_argument("--name", help="file stem to write instead of the model name (one model only)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    parser.add_argument("--cuts", default=None,
                        help="fine-tuning cut points: numbers of top blocks and/or 'all', or 'none' "
                             f"(default: {','.join(map(str, DEFAULT_CUTS))}, those the network has)")
    parser.add_argument("--no-onnx", action="store_true",
                        help="do not write NAME.features.onnx / NAME.classifier.onnx (for `tl --engine onnx`)")
    parser.add_argument("--bf16-layers", default="auto", metavar="auto|none|N,M",
                        help="layers of NAME.features.bf16.onnx whose weights are rounded to bf16 by "
                             "calibration: auto (those that need it, measured), none, or layer numbers "
                             "in graph order (default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.name and len(args.models) != 1:
        parser.error("--name takes exactly one model")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        bf16_layers = parse_bf16_layers(args.bf16_layers)
    except ValueError as exc:
        parser.error(str(exc))
    for arch in args.models:
        try:
            path = export(arch, args.weights, Path(args.out), args.name, args.force,
                          cuts=None if args.cuts is None else parse_cuts(args.cuts), onnx=not args.no_onnx,
                          bf16_layers=bf16_layers)
        except DownloadError as exc:
            print(f"export_backbones: error: {exc}", file=sys.stderr)
            print(f"export_backbones: url: {exc.url}", file=sys.stderr)
            return DOWNLOAD_FAILED
        except ExportError as exc:
            print(f"export_backbones: error: {exc}", file=sys.stderr)
            return 1
        sidecar = json.loads(path.read_text())
        tag = "" if sidecar["weights"]["pretrained"] else "  [random weights: shapes/speed only]"
        cuts = ", ".join(str(c["blocks"]) for c in sidecar["cuts"])
        cuts = f"{cuts} of {len(sidecar['blocks'])} blocks" if cuts else "none"
        onnx_note = ", ONNX: yes" if sidecar.get("onnx", {}).get("features") else ", ONNX: no"
        print(f"exported {arch} -> {path} (feature dim {sidecar['feature_dim']}, {sidecar['num_classes']} classes, "
              f"fine-tuning cuts: {cuts}{onnx_note}){tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
