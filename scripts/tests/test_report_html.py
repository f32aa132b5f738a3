"""The HTML report rendered by headless Chromium (Debian's `chromium`; scripts/test.sh installs
it when missing and it can): no console messages, a non-blank PNG, the accuracy shown equal to
report.json's, nothing loaded from outside the page. Skipped, saying so, without Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TL = ROOT / "target" / "release" / "tl"
TINY = ROOT / "tests" / "fixtures" / "generated" / "backbones" / "tiny.json"
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="SKIPPED: no chromium installed (scripts/test.sh installs Debian's chromium when it can)")


def tl(*args) -> str:
    r = subprocess.run([str(TL), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"tl {' '.join(map(str, args))}: {r.stderr}"
    return r.stdout


def chromium(page: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--window-size=1200,2400", *mode, page.as_uri()],
        capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def render(page: Path, png: Path) -> tuple[str, list[str]]:
    """(the DOM after loading, console messages of both loads); writes the screenshot."""
    shot = chromium(page, f"--screenshot={png}")
    assert png.is_file(), shot.stderr[-2000:]
    dom = chromium(page, "--dump-dom")
    return dom.stdout, console_messages(shot.stderr) + console_messages(dom.stderr)


def dataset(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for k, name in enumerate(["red", "blue", "green"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(rng.normal(60 + 70 * k, 30, (48 + 4 * i, 64, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    (root / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@needs_browser
def test_console_messages_are_caught(tmp_path):
    """The check below can fail: a page that logs an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>console.error('boom')</script></body></html>")
    _, messages = render(bad, tmp_path / "bad.png")
    assert any("boom" in m for m in messages)


@needs_browser
def test_run_report_renders_offline_with_the_reported_accuracy(tmp_path):
    data = dataset(tmp_path / "data")
    run = tmp_path / "run"
    tl("train", "-b", TINY, data, "--out", run, "-q", "--val-split", "0.5", "--epochs", "30")
    extra = tmp_path / "extra"
    extra.mkdir()
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(extra / "dream.png")
    page = tmp_path / "report.html"
    tl("report", run, "-o", page, "--include", extra)
    html = page.read_text()
    assert "<script" not in html and not re.search(r"(src|href)=\"(https?:|//)", html)
    assert (run / "report.html").is_file(), "tl train writes report.html into the run"

    dom, messages = render(page, tmp_path / "report.png")
    assert messages == [], messages
    img = np.asarray(Image.open(tmp_path / "report.png").convert("L"), dtype=np.float64)
    assert img.std() > 10 and (img < 200).mean() > 0.01, "the screenshot is blank"

    report = json.loads((run / "report.json").read_text())
    shown = re.search(r'id="accuracy">([0-9.]+)%', dom)
    assert shown, "no accuracy in the rendered page"
    assert shown.group(1) == f"{100 * report['validation']['accuracy']:.2f}"
    assert f"{100 * report['val_accuracy']:.2f}" == shown.group(1)
    for needle in ("Confusion matrix", "Learning curves", "Per class", "Worst-classified images",
                   "broken.jpg", "dream.png", "<svg"):
        assert needle in dom, needle
    assert all(src.startswith("data:") for src in re.findall(r'<img src="([^"]*)"', dom))


@needs_browser
def test_eval_report_renders(tmp_path):
    data = dataset(tmp_path / "data")
    run = tmp_path / "run"
    tl("train", "-b", TINY, data, "--out", run, "-q", "--val-split", "0.5", "--epochs", "10")
    page = tmp_path / "eval.html"
    out = json.loads(tl("eval", run, data, "--report", page, "--json", "-q"))
    dom, messages = render(page, tmp_path / "eval.png")
    assert messages == []
    assert re.search(r'id="accuracy">([0-9.]+)%', dom).group(1) == f"{100 * out['report']['accuracy']:.2f}"
