# Run by `tl export --format onnx` (embedded in the binary): TorchScript file → ONNX, then,
# when onnxruntime is installed, the ONNX model is run against the TorchScript one.
# argv: model.pt out.onnx crop. Prints one JSON line; errors go to stderr, exit 1.
import json
import sys
import warnings

src, dst, crop = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    import torch
except ImportError as e:
    sys.exit(f"needs PyTorch: {e}")
try:
    import onnx  # noqa: F401  (the exporter needs it)
except ImportError as e:
    sys.exit(f"needs the onnx package (pip install onnx): {e}")

warnings.simplefilter("ignore")
model = torch.jit.load(src, map_location="cpu").eval()
torch.manual_seed(0)
x = torch.rand(2, 3, crop, crop)
torch.onnx.export(
    model, (x,), dst, dynamo=False, opset_version=17,
    input_names=["image"], output_names=["probabilities"],
    dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
)
report = {"torch": torch.__version__, "opset": 17, "onnxruntime": None, "max_abs_diff": None}
try:
    import onnxruntime as ort
except ImportError:
    ort = None
if ort is not None:
    x = torch.rand(3, 3, crop, crop)
    with torch.no_grad():
        want = model(x).numpy()
    got = ort.InferenceSession(dst, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    report["onnxruntime"] = ort.__version__
    report["max_abs_diff"] = float(abs(got - want).max())
print(json.dumps(report))
