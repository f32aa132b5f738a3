"""The names `tl` exports on first use (src/backbone_store.rs KNOWN_MODELS) are exactly the
classification models of the torchvision in .venv."""
import re
from pathlib import Path

import torchvision

ROOT = Path(__file__).resolve().parents[2]


def test_known_models_match_torchvision():
    text = (ROOT / "src" / "backbone_store.rs").read_text()
    block = re.search(r"pub const KNOWN_MODELS: &\[&str\] = &\[(.*?)\];", text, re.S).group(1)
    known = re.findall(r'"([^"]+)"', block)
    assert known == sorted(known), "keep KNOWN_MODELS sorted"
    assert set(known) == set(torchvision.models.list_models(module=torchvision.models))
