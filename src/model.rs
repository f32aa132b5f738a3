//! A differentiable image classifier: a trained run (backbone features + head) or a
//! backbone's full ImageNet classifier. Inputs are normalised `[N,3,H,W]` tensors.
use crate::backbone::{BackboneSpec, LoadedModule};
use crate::error::{Result, TlError};
use crate::head::Head;
use crate::preprocess::PreprocessConfig;
use crate::run::Run;
use std::path::Path;
use tch::{Device, Tensor};

enum Net {
    Run { features: LoadedModule, head: Head },
    ImageNet { classifier: LoadedModule },
}

pub struct Classifier {
    net: Net,
    pub classes: Vec<String>,
    pub preprocess: PreprocessConfig,
    /// e.g. "run runs/x (mobilenet_v2 + head)" or "mobilenet_v2 ImageNet classifier".
    pub description: String,
    pub device: Device,
    pub warning: Option<String>,
}

impl Classifier {
    pub fn from_run(dir: &Path, device: Device) -> Result<Classifier> {
        let run = Run::open(dir)?;
        let (spec, _) = run.backbone()?;
        let features = spec.load_features(device)?;
        let head = Head::load(run.config.head.clone(), &run.head_path(), device)?;
        Ok(Classifier {
            net: Net::Run { features, head },
            classes: run.classes.clone(),
            preprocess: run.config.preprocess,
            description: format!(
                "run {} ({} + head)",
                dir.display(),
                run.config.backbone.name
            ),
            device,
            warning: spec.weights_warning(),
        })
    }

    pub fn from_backbone(spec: &BackboneSpec, device: Device) -> Result<Classifier> {
        let classifier = spec.load_classifier(device)?;
        let classes = spec.class_names().to_vec();
        if classes.is_empty() {
            return Err(TlError::invalid(format!(
                "backbone '{}' has no class names in its sidecar",
                spec.name
            )));
        }
        Ok(Classifier {
            net: Net::ImageNet { classifier },
            classes,
            preprocess: spec.preprocess(),
            description: format!("{} ImageNet classifier", spec.name),
            device,
            warning: spec.weights_warning(),
        })
    }

    /// Either `--run DIR` or `--backbone NAME` (exactly one).
    pub fn from_args(
        run: Option<&Path>,
        backbone: Option<&str>,
        backbones_dir: &Path,
        device: Device,
    ) -> Result<Classifier> {
        match (run, backbone) {
            (Some(dir), None) => Classifier::from_run(dir, device),
            (None, Some(name)) => Classifier::from_backbone(&BackboneSpec::resolve(name, backbones_dir)?, device),
            (Some(_), Some(_)) => Err(TlError::invalid("give either --run or --backbone, not both")),
            (None, None) => Err(TlError::invalid("which network? give --run RUN_DIR (a trained head) or --backbone NAME (its ImageNet classifier)")),
        }
    }

    /// Logits for normalised input; differentiable with respect to the input.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match &self.net {
            Net::Run { features, head } => Ok(head.forward(&features.forward(x)?)),
            Net::ImageNet { classifier } => {
                let out = classifier.forward(x)?;
                if out.size()[1] != self.classes.len() as i64 {
                    return Err(TlError::file(
                        &classifier.path,
                        format!(
                            "outputs {} logits but its sidecar lists {} classes",
                            out.size()[1],
                            self.classes.len()
                        ),
                    ));
                }
                Ok(out)
            }
        }
    }

    /// Class probabilities of preprocessed images, without gradients.
    pub fn probabilities(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        let probs = tch::no_grad(|| self.logits(&x.to_device(self.device)))?
            .softmax(-1, tch::Kind::Float)
            .to_device(Device::Cpu);
        let n = probs.size()[0];
        Ok((0..n)
            .map(|i| Vec::<f32>::try_from(probs.get(i)).unwrap_or_default())
            .collect())
    }
}
