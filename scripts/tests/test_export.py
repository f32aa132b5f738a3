"""Tests of scripts/export_backbones.py (no internet, no GPU)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import export_backbones as eb  # noqa: E402

SHARED_WEIGHTS = ROOT.parent / "shared" / "models" / "mobilenet_v2-imagenet.safetensors"
SHARED_CATS = ROOT.parent / "shared" / "data" / "cats_dogs" / "cat"


def test_tiny_export_files_sidecar_and_reload(tmp_path):
    sidecar_path = eb.export("tiny", "none", tmp_path)
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["format"] == eb.SIDECAR_FORMAT
    assert sidecar["feature_dim"] == 32 and sidecar["num_classes"] == len(sidecar["class_names"]) == 10
    assert (sidecar["resize_size"], sidecar["crop_size"]) == (256, 224)
    assert sidecar["weights"]["pretrained"] is False
    features = torch.jit.load(str(tmp_path / sidecar["features_file"]))
    classifier = torch.jit.load(str(tmp_path / sidecar["classifier_file"]))
    assert eb.sha256_file(tmp_path / sidecar["features_file"]) == sidecar["features_sha256"]
    x = torch.randn(2, 3, 224, 224)
    model, *_ = eb.build_model("tiny", "none", None)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), model(x), rtol=1e-4, atol=1e-4)
        assert features(x).shape == (2, 32)
        # Other input sizes work too (dream --size, attack at any resolution goes through the crop).
        assert classifier(torch.randn(1, 3, 97, 131)).shape == (1, 10)


def test_existing_export_is_not_overwritten(tmp_path):
    eb.export("tiny", "none", tmp_path)
    with pytest.raises(eb.ExportError, match="already exists"):
        eb.export("tiny", "none", tmp_path)
    eb.export("tiny", "none", tmp_path, force=True)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file(tmp_path, suffix):
    torch.manual_seed(0)
    model = torchvision.models.get_model("mobilenet_v3_small", weights=None).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": model.state_dict()}, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    sidecar = json.loads(eb.export("mobilenet_v3_small", str(path), tmp_path / "out").read_text())
    assert sidecar["weights"]["source"] == "file" and sidecar["weights"]["pretrained"] is True
    assert sidecar["weights"]["sha256"] == eb.sha256_file(path)
    assert sidecar["feature_dim"] == 1024  # the input of the last Linear
    exported = torch.jit.load(str(tmp_path / "out" / sidecar["classifier_file"]))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-3, atol=1e-3)


def test_wrong_weights_and_names_fail_clearly(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save(eb.Tiny().state_dict(), wrong)
    with pytest.raises(eb.ExportError, match="not a state_dict for torchvision mobilenet_v3_small"):
        eb.export("mobilenet_v3_small", str(wrong), tmp_path)
    with pytest.raises(eb.ExportError, match="weights file not found"):
        eb.export("mobilenet_v3_small", str(tmp_path / "missing.pth"), tmp_path)
    with pytest.raises(eb.ExportError, match="unknown torchvision"):
        eb.export("not_a_model", "none", tmp_path)


def test_vgg_features_are_the_pooled_conv_features():
    model = torchvision.models.vgg11(weights=None).eval()
    features = eb.feature_extractor("vgg11", model)
    with torch.no_grad():
        assert features(torch.randn(1, 3, 224, 224)).shape == (1, 512 * 7 * 7)


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file() or not SHARED_CATS.is_dir(), reason="../shared weights or photos not present")
def test_shared_mobilenet_weights_see_a_cat(tmp_path):
    from PIL import Image
    import torchvision.transforms as T

    sidecar = json.loads(eb.export("mobilenet_v2", str(SHARED_WEIGHTS), tmp_path).read_text())
    assert sidecar["feature_dim"] == 1280 and sidecar["weights"]["pretrained"]
    classifier = torch.jit.load(str(tmp_path / sidecar["classifier_file"]))
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(sidecar["mean"], sidecar["std"])])
    cats = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
    photo = sorted(SHARED_CATS.iterdir())[0]
    with torch.no_grad():
        top5 = classifier(tf(Image.open(photo).convert("RGB"))[None])[0].topk(5).indices.tolist()
    names = [sidecar["class_names"][i] for i in top5]
    assert cats & set(names), f"{photo.name}: top-5 {names}"


def test_tiny_cuts_split_the_features_and_tops_are_trainable(tmp_path):
    sidecar = json.loads(eb.export("tiny", "none", tmp_path).read_text())
    assert [c["blocks"] for c in sidecar["cuts"]] == [1, 2, 3]
    assert len(sidecar["blocks"]) == 3
    features = torch.jit.load(str(tmp_path / sidecar["features_file"]))
    x = torch.randn(2, 3, 224, 224)
    for cut in sidecar["cuts"]:
        top = torch.jit.load(str(tmp_path / cut["top_file"]))
        assert eb.sha256_file(tmp_path / cut["top_file"]) == cut["top_sha256"]
        params = list(top.parameters())
        assert params and all(p.requires_grad for p in params)
        assert sum(p.numel() for p in params) == cut["top_parameters"]
        if cut.get("trunk_file"):
            trunk = torch.jit.load(str(tmp_path / cut["trunk_file"]))
            inner = trunk(x)
            assert list(inner.shape[1:]) == cut["trunk_shape"]
        else:
            inner = x
        with torch.no_grad():
            torch.testing.assert_close(top(inner), features(x), rtol=1e-4, atol=1e-4)
        # The top trains: a gradient reaches its parameters.
        top(inner.detach()).sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("arch,count,first", [("mobilenet_v2", 19, "features.18"),
                                              ("resnet50", 17, "layer4.2"),
                                              ("vgg16", 13, "features.28-30")])
def test_blocks_of_the_big_architectures(arch, count, first):
    model = torchvision.models.get_model(arch, weights=None).eval()
    names, blocks, tail = eb.split_blocks(arch, model)
    assert len(names) == len(blocks) == count
    assert names[-1] == first
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = eb.feature_extractor(arch, model)(x)
        got = tail(torch.nn.Sequential(*blocks)(x))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_bad_cuts_fail_clearly(tmp_path):
    with pytest.raises(eb.ExportError, match="not a positive number"):
        eb.parse_cuts("1,x")
    with pytest.raises(eb.ExportError, match="tiny has 3 blocks"):
        eb.export("tiny", "none", tmp_path, cuts=[3])
    assert eb.parse_cuts("none") == []


def test_onnx_files_match_the_torchscript_ones_in_onnx_runtime(tmp_path):
    import onnxruntime as ort

    sidecar = json.loads(eb.export("tiny", "none", tmp_path).read_text())
    x = torch.randn(3, 3, 224, 224)  # another batch size than the export's example
    for kind in ("features", "classifier"):
        entry = sidecar["onnx"][kind]
        path = tmp_path / entry["file"]
        assert entry["file"] == f"tiny.{kind}.onnx" and entry["opset"] == eb.ONNX_OPSET
        assert eb.sha256_file(path) == entry["sha256"]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        with torch.no_grad():
            want = torch.jit.load(str(tmp_path / sidecar[f"{kind}_file"]))(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_no_onnx_writes_no_onnx_files(tmp_path):
    sidecar = json.loads(eb.export("tiny", "none", tmp_path, onnx=False).read_text())
    assert sidecar["onnx"] == {} and not list(tmp_path.glob("*.onnx"))
