#!/usr/bin/env python3
"""Test fixtures for `cargo test`, written to tests/fixtures/generated/ (git-ignored).

- backbones/tiny.*          the seeded `tiny` conv net exported exactly like a real backbone
- backbones/raw.pt          the same feature extractor without a sidecar ("any TorchScript model")
- broken/                   files a real photo folder contains: truncated JPEG, zero bytes, text named
                            .jpg, PNG named .jpg, CMYK JPEG, 16-bit PNG, grayscale, RGBA
- parity.safetensors        torchvision's eval transform and the tiny backbone's outputs on
                            generated images (and on real photos from ../shared when present), for
                            the preprocessing-parity and TorchScript-identity tests
- parity.json               the file list of parity.safetensors
- geometry/                 PNGs of odd sizes and Pillow's Resize + CenterCrop of each, for the
                            exact-geometry test

Runs in a few seconds; scripts/test.sh calls it before cargo test.
"""
from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
import torchvision.transforms as T

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import export_backbones  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "generated"
SHARED = ROOT.parent / "shared" / "data" / "cats_dogs"


def smooth_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like image: smooth gradients, blobs and some noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * xx / 37 + b * yy / 23 + p * 6)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 60)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_broken(dir: Path, rng: np.random.Generator) -> None:
    dir.mkdir(parents=True, exist_ok=True)
    base = smooth_image(rng, 120, 90)
    buf = io.BytesIO()
    base.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    (dir / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (dir / "zero.jpg").write_bytes(b"")
    (dir / "text.jpg").write_text("this is not an image\n")
    base.save(dir / "png_named.jpg", "PNG")
    base.convert("CMYK").save(dir / "cmyk.jpg", "JPEG", quality=90)
    arr16 = (np.asarray(base.convert("L"), np.uint16) * 257)
    Image.fromarray(arr16).save(dir / "gray16.png")
    base.convert("L").save(dir / "gray.jpg", "JPEG")
    base.convert("RGBA").save(dir / "rgba.png")


def parity(tiny_features: Path, rng: np.random.Generator) -> None:
    """torchvision's eval transform and tiny-backbone outputs, for tests/parity.rs."""
    files = []
    gen = OUT / "parity_images"
    gen.mkdir(exist_ok=True)
    # The last two are drafted by 2 and by 4 under --decode draft.
    sizes = [(500, 375), (375, 500), (333, 333), (640, 427), (257, 1000), (120, 80), (1024, 768),
             (2100, 1600)]
    for i, (w, h) in enumerate(sizes):
        path = gen / f"gen{i}.jpg"
        smooth_image(rng, w, h).save(path, "JPEG", quality=92)
        files.append(path)
        path = gen / f"gen{i}.png"
        smooth_image(rng, w, h).save(path, "PNG")
        files.append(path)
    # Valid images in unusual encodings must match Pillow too. (Not the 16-bit PNG: Pillow's
    # convert('RGB') clips 16-bit values at 255 instead of scaling them; tl scales them.)
    files += [OUT / "broken" / n for n in ("png_named.jpg", "cmyk.jpg", "gray.jpg", "rgba.png")]
    real = []
    if SHARED.is_dir():
        for cls in ("cat", "dog"):
            real += sorted((SHARED / cls).iterdir())[:10]
    else:
        print(f"make_fixtures: {SHARED} not present: parity on generated images only (real photos skipped)")
    files += real
    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    pixels = torch.stack([transform(Image.open(p).convert("RGB")) for p in files])

    def drafted(path: Path) -> Image.Image:
        """The input contract of `--decode draft` (export sidecars state it)."""
        im = Image.open(path)
        im.draft("RGB", (256, 256))
        return im.convert("RGB")

    pixels_draft = torch.stack([transform(drafted(p)) for p in files])
    mean = torch.tensor(export_backbones.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(export_backbones.IMAGENET_STD).view(1, 3, 1, 1)
    model = torch.jit.load(str(tiny_features))
    with torch.no_grad():
        features = model((pixels - mean) / std)
        probe = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(7))
        probe_out = model(probe)
    save_file({"pixels": pixels.contiguous(), "pixels_draft": pixels_draft.contiguous(),
               "features": features.contiguous(), "probe": probe.contiguous(),
               "probe_features": probe_out.contiguous()}, str(OUT / "parity.safetensors"))
    (OUT / "parity.json").write_text(json.dumps({"files": [str(p) for p in files], "real": len(real)}, indent=1))


# (width, height, resize, crop): odd sizes, half-pixel crop offsets, up- and downscaling.
GEOMETRY = [(341, 256, 256, 224), (257, 1000, 256, 224), (97, 61, 40, 32), (500, 375, 256, 224),
            (223, 225, 224, 224), (120, 80, 256, 224), (1001, 333, 64, 56),
            (300, 1000, 256, 224), (64, 640, 40, 32), (640, 64, 40, 32)]


def geometry(rng: np.random.Generator) -> None:
    """Pillow's own Resize + CenterCrop of PNGs (no decoder differences), for an exact test."""
    out = OUT / "geometry"
    out.mkdir()
    arrays, cases = {}, []
    for i, (w, h, resize, crop) in enumerate(GEOMETRY):
        path = out / f"g{i}.png"
        smooth_image(rng, w, h).save(path)
        img = T.CenterCrop(crop)(T.Resize(resize)(Image.open(path).convert("RGB")))
        arrays[f"g{i}"] = torch.from_numpy(np.asarray(img).copy())
        cases.append({"file": str(path), "resize": resize, "crop": crop, "key": f"g{i}"})
    save_file(arrays, str(out / "pillow.safetensors"))
    (out / "cases.json").write_text(json.dumps(cases, indent=1))


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "backbones").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sidecar = export_backbones.export("tiny", "none", OUT / "backbones", force=True)
    features = OUT / "backbones" / "tiny.features.pt"
    shutil.copy(features, OUT / "backbones" / "raw.pt")
    write_broken(OUT / "broken", rng)
    parity(features, rng)
    geometry(rng)
    print(f"make_fixtures: wrote {OUT.relative_to(ROOT)} (tiny backbone {sidecar.name}, broken files, parity references)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
