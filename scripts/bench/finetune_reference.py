#!/usr/bin/env python3
"""PyTorch reference for `tl train --finetune N`: the same two stages on the same split.

Reads a finished tl run (config.json, split.json, classes.json), rebuilds the backbone in
eager PyTorch from the sidecar's weights file, and repeats tl's recipe independently:

  1. the frozen trunk (all but the last N blocks) runs once per image (torchvision's eval
     transform on PIL images); the top as exported gives the features; a linear head is
     trained on them: AdamW (weight decay as in the run), the run's learning rate and L2
     penalty (l2/2 * |W|^2), cosine schedule, batch size, epochs and early stopping on
     validation loss (best epoch kept);
  2. the last N blocks and the head together: Adam at the fine-tuning learning rate, cosine
     schedule, the run's batch size, epochs and patience; BatchNorm in eval mode.

Prints one JSON line: validation accuracy after each stage, for comparison with tl's
report.json. Only the eval view is used (tl runs with --views 1).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import export_backbones  # noqa: E402


def load_model(sidecar: dict) -> nn.Module:
    weights = sidecar["weights"]
    if weights.get("source") != "file":
        raise SystemExit("the reference needs a backbone exported from a local weights file")
    model, *_ = export_backbones.build_model(sidecar["architecture"], weights["file"], None)
    return model.eval()


def images(paths: list[Path], sidecar: dict) -> torch.Tensor:
    tf = transforms.Compose([
        transforms.Resize(sidecar["resize_size"]),
        transforms.CenterCrop(sidecar["crop_size"]),
        transforms.ToTensor(),
        transforms.Normalize(sidecar["mean"], sidecar["std"]),
    ])
    return torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])


def run_in_batches(module: nn.Module, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)])


def cosine(lr: float, epoch: int, epochs: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))


def fit(params_owner: list[nn.Module], forward, train, val, *, opt, lr, epochs, batch, l2,
        head: nn.Linear, patience: int, smoothing: float, seed: int) -> float:
    """Mini-batch training with early stopping on validation loss; returns val accuracy."""
    (xt, yt), (xv, yv) = train, val
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
    best, best_state, since = float("inf"), None, 0
    for epoch in range(1, epochs + 1):
        for group in opt.param_groups:
            group["lr"] = cosine(lr, epoch, epochs)
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = order[i:i + batch]
            loss = loss_fn(forward(xt[idx]), yt[idx]) + l2 / 2 * head.weight.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(nn.functional.cross_entropy(forward(xv), yv))
        if val_loss < best - 1e-7:
            best, since = val_loss, 0
            best_state = [copy.deepcopy(m.state_dict()) for m in params_owner]
        else:
            since += 1
            if patience and since >= patience:
                break
    for m, state in zip(params_owner, best_state):
        m.load_state_dict(state)
    with torch.no_grad():
        return float((forward(xv).argmax(1) == yv).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a tl run folder trained with --finetune N")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = json.loads((args.run / "config.json").read_text())
    split = json.loads((args.run / "split.json").read_text())
    classes = json.loads((args.run / "classes.json").read_text())
    ft = config.get("finetune")
    if not ft or ft["unfreeze"] == "all" or config.get("views", 1) != 1:
        raise SystemExit("the reference covers --finetune N with --views 1")
    sidecar = json.loads(Path(config["backbone"]["sidecar"]).read_text())
    torch.manual_seed(config["seed"])
    model = load_model(sidecar)
    _, blocks, tail = export_backbones.split_blocks(sidecar["architecture"], model)
    n = ft["blocks"]
    trunk = nn.Sequential(*blocks[:len(blocks) - n]).eval()
    top = export_backbones.Top(copy.deepcopy(blocks[len(blocks) - n:]), copy.deepcopy(tail)).eval()

    root = Path(config["data"]["root"])
    def side(entries):
        paths = [root / e["path"] for e in entries]
        labels = torch.tensor([classes.index(Path(e["path"]).parent.name) for e in entries])
        return run_in_batches(trunk, images(paths, sidecar)), labels
    train, val = side(split["train"]), side(split["val"])

    head_cfg, tr = config["head"], config["train"]
    feats_t, feats_v = run_in_batches(top, train[0]), run_in_batches(top, val[0])
    mean, std = feats_t.mean(0), feats_t.std(0, unbiased=False).clamp_min(1e-6)
    if not head_cfg.get("standardize", False):
        mean, std = torch.zeros_like(mean), torch.ones_like(std)
    head = nn.Linear(feats_t.shape[1], len(classes))
    adamw = torch.optim.AdamW(head.parameters(), lr=tr["lr"], weight_decay=tr["weight_decay"])
    head_acc = fit([head], lambda f: head((f - mean) / std), (feats_t, train[1]), (feats_v, val[1]),
                   opt=adamw, lr=tr["lr"], epochs=tr["epochs"], batch=tr["batch_size"], l2=tr["l2"],
                   head=head, patience=tr["patience"], smoothing=tr["label_smoothing"], seed=config["seed"])

    fc = ft["config"]
    adam = torch.optim.Adam(list(top.parameters()) + list(head.parameters()), lr=fc["lr"])
    tuned_acc = fit([top, head], lambda r: head((top(r) - mean) / std), train, val, opt=adam,
                    lr=fc["lr"], epochs=fc["epochs"], batch=fc["batch_size"], l2=fc["l2"], head=head,
                    patience=fc["patience"], smoothing=fc["label_smoothing"], seed=config["seed"])
    print(json.dumps({"run": str(args.run), "blocks": n, "head_only_val_accuracy": head_acc,
                      "finetuned_val_accuracy": tuned_acc, "val_images": len(val[1]),
                      "torch": torch.__version__, "torchvision": torchvision.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
