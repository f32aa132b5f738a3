# Run by `tl export` (embedded in the binary) with `python -I`: the traced TorchScript file
# → the exported model. argv: traced.pt out crop classes format, where `classes` is 0 for a
# traced model that returns probabilities alone, or C for one that returns [N, C+1]
# (probabilities, then the unknown score in the last column: tch traces a single output),
# and `format` is `torchscript` or `onnx`. With C > 0 the written model returns the tuple
# (probabilities [N, C], unknown_score [N]). The written model is run against the traced
# one (ONNX in onnxruntime, when installed). Prints one JSON line; errors go to stderr, exit 1.
import json
import sys
import warnings
from typing import Tuple

src, dst, crop, classes, fmt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    import torch
except ImportError as e:
    sys.exit(f"needs PyTorch: {e}")
if fmt == "onnx":
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as e:
        sys.exit(f"needs the onnx package (pip install onnx): {e}")

warnings.simplefilter("ignore")


class Judged(torch.nn.Module):
    """The traced [N, C+1] output as (probabilities, unknown_score)."""

    def __init__(self, inner: torch.nn.Module, classes: int):
        super().__init__()
        self.inner = inner
        self.classes = classes

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.inner(image)
        return out[:, : self.classes], out[:, self.classes]


traced = torch.jit.load(src, map_location="cpu").eval()
model = Judged(traced, classes).eval() if classes > 0 else traced
outputs = ["probabilities", "unknown_score"] if classes > 0 else ["probabilities"]
torch.manual_seed(0)
x = torch.rand(2, 3, crop, crop)
report = {"torch": torch.__version__, "opset": None, "onnxruntime": None, "max_abs_diff": None}


def as_list(out):
    return [o.detach().numpy() for o in (out if isinstance(out, tuple) else (out,))]


with torch.no_grad():
    check = torch.rand(3, 3, crop, crop)
    want = as_list(model(check))
# Traced, not scripted: `python -c` has no source for the wrapper class to compile.
with torch.no_grad():
    wrapped = torch.jit.trace(model, (x,), check_trace=False) if classes > 0 else model
if fmt == "torchscript":
    torch.jit.save(wrapped, dst)
    with torch.no_grad():
        got = as_list(torch.jit.load(dst, map_location="cpu").eval()(check))
    report["max_abs_diff"] = max(float(abs(g - w).max()) for g, w in zip(got, want)) if len(got) == len(want) else 1e9
else:
    torch.onnx.export(
        wrapped, (x,), dst, dynamo=False, opset_version=17,
        input_names=["image"], output_names=outputs,
        dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
    )
    report["opset"] = 17
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        got = ort.InferenceSession(dst, providers=["CPUExecutionProvider"]).run(None, {"image": check.numpy()})
        report["onnxruntime"] = ort.__version__
        report["max_abs_diff"] = max(float(abs(g - w).max()) for g, w in zip(got, want)) if len(got) == len(want) else 1e9
print(json.dumps(report))
