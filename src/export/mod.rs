//! Stage 6: a trained run as one model file that other programs load without `tl`:
//! TorchScript (normalisation, backbone with any fine-tuned top, head, temperature and
//! softmax in one graph; for runs with an unknown judge, a second output: the unknown score
//! against the training features held inside) or ONNX made from it, and a JSON sidecar that
//! states the input contract and the unknown threshold.
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
/// [0, 1] → calibrated softmax probabilities, and the unknown scores `[N]` when the
/// classifier has a judge.
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
            match outputs(classifier, &normalized) {
                Ok(p) => p,
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

/// Probabilities `[N, C]`, or with a judge `[N, C+1]` with the unknown score last (tch
/// traces a single output; [`onnx::convert`] splits it into two).
fn outputs(classifier: &Classifier, normalized: &Tensor) -> Result<Vec<Tensor>> {
    let answer = classifier.answer(normalized)?;
    Ok(vec![match answer.unknown_scores {
        Some(s) => Tensor::cat(&[answer.probabilities, s.unsqueeze(1)], 1),
        None => answer.probabilities,
    }])
}

/// The trace, at a batch size it was not traced with, against the run itself.
fn check_trace(classifier: &Classifier, module: &CModule) -> Result<()> {
    let side = classifier.preprocess.crop as i64;
    let x = Tensor::rand([3, 3, side, side], (Kind::Float, Device::Cpu));
    let (want, got) = tch::no_grad(|| -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let want = outputs(classifier, &normalize_tensor(&x, &classifier.preprocess))?;
        let got = module
            .forward_is(&[tch::IValue::Tensor(x.shallow_clone())])
            .torch_ctx(|| "running the traced network".into())?;
        let got = match got {
            tch::IValue::Tensor(t) => vec![t],
            tch::IValue::Tuple(parts) => parts
                .into_iter()
                .filter_map(|p| match p {
                    tch::IValue::Tensor(t) => Some(t),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok((want, got))
    })?;
    if got.len() != want.len() {
        return Err(TlError::invalid(format!(
            "the traced network returns {} outputs, the run {}",
            got.len(),
            want.len()
        )));
    }
    for (got, want) in got.into_iter().zip(want) {
        compare_output(got, want)?;
    }
    Ok(())
}

fn compare_output(got: Tensor, want: Tensor) -> Result<()> {
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
