"""The bf16 export (NAME.features.bf16.onnx): weights of the layers that nearest rounding to bf16
would spoil are rounded by calibration instead (scripts/export_backbones.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import export_backbones as eb  # noqa: E402

CROP = 64


def is_bf16(a) -> bool:
    return bool(np.all(eb.to_bf16(a) == a))


@pytest.mark.parametrize("value, want", [
    (1.0, 1.0),
    (1.00390625, 1.0),        # 1 + 2^-8: a tie, to even
    (1.01171875, 1.015625),   # 1 + 3*2^-8: a tie, to even (up)
    (1.005, 1.0078125),       # above the tie: up
    (-37.37, -37.25),
    (0.0, 0.0),
])
def test_nearest_bf16(value, want):
    assert eb.to_bf16(np.array([value], np.float32))[0] == np.float32(want)


@pytest.mark.parametrize("value", [1.005, 1.002, -37.37, 15.07, -0.0123, 3.0e-7])
def test_the_other_neighbour_is_one_bf16_step_across(value):
    w = np.array([value], np.float32)
    near = eb.to_bf16(w)
    other = eb.bf16_other_neighbour(w, near)
    assert is_bf16(other) and other[0] != near[0]
    # w lies between its two neighbours, and nothing in bf16 lies between them
    assert min(near[0], other[0]) <= w[0] <= max(near[0], other[0])
    step = abs(near.view(np.uint32).astype(np.int64)[0] - other.view(np.uint32).astype(np.int64)[0])
    assert step == 0x10000


def test_a_bf16_weight_has_no_other_neighbour():
    w = np.array([1.5, 0.0, -2.0], np.float32)
    assert np.array_equal(eb.bf16_other_neighbour(w, eb.to_bf16(w)), w)


def smooth_patches(n: int, fan_in: int, seed: int):
    """Rows of strongly correlated inputs (neighbouring pixels of smooth images)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(1.0, 0.5, (n, 1))
    return (base + 0.02 * rng.normal(size=(n, fan_in))).astype(np.float32)


def test_calibrated_rounding_keeps_bf16_values_and_cuts_a_cancelling_layers_error():
    rng = np.random.default_rng(0)
    # Large weights that cancel on smooth inputs: the output is a small difference.
    sign = np.where(np.arange(9) % 2 == 0, 1.0, -1.0)
    rows = (37.37 * sign[None, :] + rng.normal(0, 0.3, (16, 9))).astype(np.float32)
    patches = smooth_patches(4000, 9, 1)
    values, before, after = eb.round_rows(rows, patches)
    near, other = eb.to_bf16(rows), eb.bf16_other_neighbour(rows, eb.to_bf16(rows))
    assert is_bf16(values)
    assert np.all((values == near) | (values == other))
    assert after <= before / 5, (before, after)
    # and on inputs it was not calibrated on
    fresh = smooth_patches(4000, 9, 2)
    err = lambda v: float(np.mean(((fresh @ (v - rows).T.astype(np.float64)) ** 2)))  # noqa: E731
    assert err(values) <= err(near) / 5


def test_well_conditioned_rows_lose_nothing():
    rng = np.random.default_rng(3)
    rows = rng.normal(0, 0.1, (8, 27)).astype(np.float32)
    patches = rng.normal(0, 1, (2000, 27)).astype(np.float32)
    values, before, after = eb.round_rows(rows, patches)
    assert is_bf16(values) and after <= before


class Planted(nn.Module):
    """A small net whose second layer, a depthwise 3x3 convolution, has large weights that
    sum to almost nothing: on smooth inputs its outputs are small differences of large
    products (as in MobileNetV2's first depthwise convolution)."""

    def __init__(self, seed: int = 5):
        super().__init__()
        torch.manual_seed(seed)  # the layers' default initialisation
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv3 = nn.Conv2d(8, 16, 1)
        with torch.no_grad():
            self.conv1.weight.abs_()
            self.conv1.bias.fill_(1.0)
            laplace = torch.tensor([[1.0, -2.0, 1.0], [2.0, -4.0, 2.0], [1.0, -2.0, 1.0]])
            self.dw.weight.copy_(37.37 * laplace + 0.3 * torch.randn(8, 1, 3, 3))

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.conv1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv3(x), 1), 1)


def planted_export(tmp_path: Path, seed: int = 5) -> dict:
    model = Planted(seed).eval()
    x = torch.randn(2, 3, CROP, CROP)
    with torch.no_grad():
        want = model(x)
    return eb.export_onnx(model, x, want, tmp_path / "planted.features.onnx")


def openvino_features(path: Path, precision: str, x):
    import openvino as ov
    core = ov.Core()
    model = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return next(iter(model(x).values()))


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_a_planted_sensitive_layer_is_found_and_rounded_by_calibration(tmp_path):
    import onnx
    from onnx import numpy_helper

    entry = planted_export(tmp_path)
    record = eb.export_bf16(entry, tmp_path, "planted", CROP)
    assert record["rerounded_index"] == [1], record  # the depthwise layer, and only it
    assert record["file"] == "planted.features.bf16.onnx"
    assert eb.sha256_file(tmp_path / record["file"]) == record["sha256"]
    cos = record["features_cosine_weights_in_bf16"]
    assert 1 - cos["calibrated"] <= (1 - cos["nearest"]) / 10, cos
    # Only those layers' weights changed, to bf16 values next to the exact ones.
    plain = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / entry["file"])).graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / record["file"])).graph.initializer}
    layers = eb.weighted_layers(onnx.load(str(tmp_path / entry["file"])))
    changed = sorted(name for name in plain if not np.array_equal(plain[name], new[name]))
    assert changed == sorted(layers[i].input[1] for i in record["rerounded_index"])
    for name in changed:
        w = plain[name]
        assert is_bf16(new[name]) and np.all(np.abs(new[name] - w) <= np.abs(w) * 2.0 ** -7)
    if not cpu_has_native_bf16():
        pytest.skip("OpenVINO part: this CPU has no native bf16 (avx512_bf16 or AMX)")
    pytest.importorskip("openvino")
    # OpenVINO in bf16 on images the calibration never saw: ten times closer to fp32.
    x = eb.calibration_images(24, CROP)[8:]
    exact = openvino_features(tmp_path / entry["file"], "f32", x)
    before = eb.mean_cosine(openvino_features(tmp_path / entry["file"], "bf16", x), exact)
    after = eb.mean_cosine(openvino_features(tmp_path / record["file"], "bf16", x), exact)
    print(f"OpenVINO bf16 vs f32, mean cosine: nearest {before:.5f}, calibrated {after:.5f}")
    assert 1 - after <= (1 - before) / 10, (before, after)


def test_no_layer_to_round_names_the_plain_export(tmp_path):
    entry = planted_export(tmp_path)
    record = eb.export_bf16(entry, tmp_path, "planted", CROP, force=[])
    assert (record["file"], record["sha256"], record["rerounded"]) == (entry["file"], entry["sha256"], [])
    assert not (tmp_path / "planted.features.bf16.onnx").exists()
    with pytest.raises(eb.ExportError, match="below 3"):
        eb.export_bf16(entry, tmp_path, "planted", CROP, force=[3])


def test_bf16_layers_flag():
    assert eb.parse_bf16_layers("auto") is None
    assert eb.parse_bf16_layers("none") == []
    assert eb.parse_bf16_layers("5,1,5") == [1, 5]
    with pytest.raises(ValueError, match="--bf16-layers"):
        eb.parse_bf16_layers("first")
