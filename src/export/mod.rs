//! Stage 6: a trained run as one model file that other programs load without `tl`:
//! TorchScript (normalisation, backbone with any fine-tuned top, head and softmax in one
//! graph) or ONNX made from it, and a JSON sidecar that states the input contract.
//!
//! The TorchScript graph is recorded by tracing the run's own forward pass (tch's
//! `create_by_tracing`): what `tl predict` computes is what the file computes. The trace is
//! then run at another batch size and compared with the run, so a graph that baked in a
//! shape is refused rather than shipped.
pub mod onnx;

use crate::data::preprocess::normalize_tensor;
use crate::error::{Result, TlError, TorchContext};
use crate::inspect::Classifier;
use tch::{CModule, Device, Kind, Tensor};

/// Largest difference allowed between the traced file and the run it came from.
const TRACE_TOLERANCE: f64 = 1e-5;

/// The run's classifier (on the CPU) traced into one TorchScript module: `[N,3,H,W]` in
/// [0, 1] → softmax probabilities.
pub fn trace(classifier: &Classifier) -> Result<CModule> {
    if classifier.device != Device::Cpu {
        return Err(TlError::invalid("export traces the network on the CPU"));
    }
    let side = classifier.preprocess.crop as i64;
    tch::manual_seed(0);
    let example = Tensor::rand([2, 3, side, side], (Kind::Float, Device::Cpu));
    // Made before tracing: tensors built from data inside the trace would be recorded as
    // `zeros` (the copy of the data is invisible to the tracer).
    let unit = Tensor::zeros([1, 3, 1, 1], (Kind::Float, Device::Cpu));
    let (shift, scale) = (
        normalize_tensor(&unit, &classifier.preprocess),
        normalize_tensor(&(&unit + 1.0), &classifier.preprocess),
    );
    let scale = scale - &shift;
    let mut failure = None;
    let module = tch::no_grad(|| {
        CModule::create_by_tracing("TlClassifier", "forward", &[example], &mut |xs| {
            let normalized = &xs[0] * &scale + &shift;
            match probabilities(classifier, &normalized) {
                Ok(p) => vec![p],
                Err(e) => {
                    failure = Some(e);
                    vec![xs[0].shallow_clone()]
                }
            }
        })
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let module = module.torch_ctx(|| "tracing the run's network".into())?;
    check_trace(classifier, &module)?;
    Ok(module)
}

/// Softmax of the classifier's logits for normalised input.
fn probabilities(classifier: &Classifier, normalized: &Tensor) -> Result<Tensor> {
    Ok(classifier.logits(normalized)?.softmax(-1, Kind::Float))
}

/// The trace, at a batch size it was not traced with, against the run itself.
fn check_trace(classifier: &Classifier, module: &CModule) -> Result<()> {
    let side = classifier.preprocess.crop as i64;
    let x = Tensor::rand([3, 3, side, side], (Kind::Float, Device::Cpu));
    let (want, got) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
        let want = probabilities(classifier, &normalize_tensor(&x, &classifier.preprocess))?;
        let got = module
            .forward_ts(&[&x])
            .torch_ctx(|| "running the traced network".into())?;
        Ok((want, got))
    })?;
    if got.size() != want.size() {
        return Err(TlError::invalid(format!(
            "the traced network returns {:?} for a batch of 3, the run {:?}",
            got.size(),
            want.size()
        )));
    }
    let diff = (got - want).abs().max().double_value(&[]);
    if diff.is_nan() || diff > TRACE_TOLERANCE {
        return Err(TlError::invalid(format!(
            "the traced network differs from the run by {diff:.2e} (limit {TRACE_TOLERANCE:.0e}); this backbone cannot be exported by tracing"
        )));
    }
    Ok(())
}
