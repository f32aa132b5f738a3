//! A differentiable image classifier: a trained run (backbone features + head) or a
//! backbone's full ImageNet classifier. `logits` takes normalised `[N,3,H,W]` tensors; the
//! `classify_*` methods take decoded images and say in their name whether they resize.
use crate::data::preprocess::{self, normalize_tensor, PreprocessConfig};
use crate::error::TorchContext;
use crate::error::{Result, TlError};
use crate::eval::{top_classes, ClassProb};
use crate::features::backbone::{BackboneSpec, LoadedModule};
use crate::features::{FeatureNet, FrozenModel};
use crate::head::Head;
use crate::model_file::{ModelFormat, ModelSidecar};
use crate::run::Run;
use crate::runtime::Runtime;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Which network to look at: a trained run, or a backbone's own ImageNet classifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkChoice {
    Run(PathBuf),
    Backbone(String),
    /// A TorchScript file written by `tl export` (with its sidecar).
    Exported(PathBuf),
}

enum Network {
    Run {
        features: Box<FeatureNet>,
        head: Head,
    },
    ImageNet {
        classifier: LoadedModule,
    },
    /// A frozen run on another engine (ONNX Runtime): inference only, no input gradients.
    RunInference {
        frozen: std::sync::Mutex<FrozenModel>,
        head: Head,
    },
    /// `[N,3,H,W]` in [0, 1] → probabilities (normalisation inside).
    Exported {
        module: tch::CModule,
        path: PathBuf,
    },
}

pub struct Classifier {
    net: Network,
    pub classes: Vec<String>,
    pub preprocess: PreprocessConfig,
    /// e.g. "run runs/x (mobilenet_v2 + head)" or "mobilenet_v2 ImageNet classifier".
    pub description: String,
    pub device: Device,
    /// Set when the weights are random or the preprocessing is assumed.
    pub warning: Option<String>,
}

impl Classifier {
    pub fn load(choice: &NetworkChoice, rt: &Runtime) -> Result<Classifier> {
        match choice {
            NetworkChoice::Run(dir) => Classifier::from_run(&Run::open(dir)?, rt.device),
            NetworkChoice::Backbone(name) => {
                Classifier::from_backbone(&BackboneSpec::resolve(name, &rt.backbones)?, rt.device)
            }
            NetworkChoice::Exported(path) => Classifier::from_exported(path, rt.device),
        }
    }

    /// As [`Classifier::load`], for inference only (`tl predict`): a frozen run's backbone
    /// runs on the runtime's engine (ONNX Runtime where `--engine` picks it).
    pub fn load_for_inference(choice: &NetworkChoice, rt: &Runtime) -> Result<Classifier> {
        let NetworkChoice::Run(dir) = choice else {
            return Classifier::load(choice, rt);
        };
        let run = Run::open(dir)?;
        if run.config.finetune.is_some() {
            return Classifier::from_run(&run, rt.device);
        }
        let spec = run.backbone()?.for_engine(rt.engine, rt.device)?;
        if spec.engine == crate::features::Engine::Torch {
            return Classifier::from_run(&run, rt.device);
        }
        let frozen = spec.load_frozen(rt.device, rt.threads, true)?;
        Ok(Classifier {
            net: Network::RunInference {
                frozen: std::sync::Mutex::new(frozen),
                head: run.load_head(rt.device)?,
            },
            classes: run.classes.clone(),
            preprocess: run.config.preprocess,
            description: format!(
                "run {} ({} on {} + head)",
                run.dir.display(),
                run.config.backbone.name,
                spec.engine.label()
            ),
            device: rt.device,
            warning: spec.weights_warning(),
        })
    }

    /// A model written by `tl export` (TorchScript), checked against its sidecar.
    pub fn from_exported(path: &Path, device: Device) -> Result<Classifier> {
        if !path.is_file() {
            return Err(TlError::file(path, "model file not found"));
        }
        let sidecar = ModelSidecar::load(path)?;
        if sidecar.model_format != ModelFormat::TorchScript {
            return Err(TlError::file(
                path,
                "is an ONNX export; tl runs the TorchScript one (run this file with ONNX Runtime)",
            ));
        }
        let module = tch::CModule::load_on_device(path, device)
            .torch_ctx(|| format!("{}: loading", path.display()))?;
        Ok(Classifier {
            net: Network::Exported {
                module,
                path: path.to_path_buf(),
            },
            classes: sidecar.classes.clone(),
            preprocess: sidecar.input.preprocess(),
            description: format!(
                "exported model {} ({} + head, from run {})",
                path.display(),
                sidecar.source.backbone,
                sidecar.source.run
            ),
            device,
            warning: None,
        })
    }

    pub fn from_run(run: &Run, device: Device) -> Result<Classifier> {
        let spec = run.backbone()?;
        let features = run.feature_net(device)?;
        let head = run.load_head(device)?;
        let tuned = match &run.config.finetune {
            Some(f) => format!(", {} top block(s) fine-tuned", f.blocks),
            None => String::new(),
        };
        Ok(Classifier {
            net: Network::Run {
                features: Box::new(features),
                head,
            },
            classes: run.classes.clone(),
            preprocess: run.config.preprocess,
            description: format!(
                "run {} ({}{tuned} + head)",
                run.dir.display(),
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
            net: Network::ImageNet { classifier },
            classes,
            preprocess: spec.preprocess(),
            description: format!("{} ImageNet classifier", spec.name),
            device,
            warning: spec.weights_warning(),
        })
    }

    /// Logits for normalised input; differentiable with respect to the input.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match &self.net {
            Network::Run { features, head } => Ok(head.forward(&features.forward(x)?)),
            Network::ImageNet { classifier } => {
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
            Network::RunInference { frozen, head } => {
                let n = x.size()[0] as usize;
                let data = Vec::<f32>::try_from(
                    &x.detach().to_device(Device::Cpu).contiguous().view([-1]),
                )
                .torch_ctx(|| "reading the input batch".into())?;
                let features = frozen
                    .lock()
                    .map_err(|_| TlError::invalid("the backbone failed in another thread"))?
                    .run(&data, n, &self.preprocess, Device::Cpu, false)?;
                let d = (features.len() / n.max(1)) as i64;
                let features = Tensor::from_slice(&features)
                    .view([n as i64, d])
                    .to_device(self.device);
                Ok(head.forward(&features))
            }
            Network::Exported { module, path } => {
                // An exported model normalises inside.
                let probs = module
                    .forward_ts(&[preprocess::denormalize_tensor(x, &self.preprocess)])
                    .torch_ctx(|| format!("{}: forward", path.display()))?;
                if probs.dim() != 2 || probs.size()[1] != self.classes.len() as i64 {
                    return Err(TlError::file(
                        path,
                        format!(
                            "returns shape {:?}; its sidecar lists {} classes",
                            probs.size(),
                            self.classes.len()
                        ),
                    ));
                }
                // Log-probabilities are logits up to a constant: the softmax gives them back.
                Ok(probs.clamp_min(1e-30).log())
            }
        }
    }

    /// Class probabilities of a normalised batch, without gradients.
    pub fn probabilities(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        let logits = tch::no_grad(|| self.logits(&x.to_device(self.device)))?;
        crate::util::tensors::rows(&logits.softmax(-1, tch::Kind::Float))
    }

    /// One image through the eval transform (resize, centre crop, normalise): `tl predict`.
    pub fn classify_resized(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let x = preprocess::resized_tensor(img, &self.preprocess);
        self.first_row(&x)
    }

    /// One image as it is, only normalised (no resize, no crop): how a dream is scored.
    pub fn classify_as_is(&self, img: &RgbImage) -> Result<Vec<f32>> {
        self.classify_unit(&preprocess::image_to_unit_tensor(img))
    }

    /// As [`Classifier::classify_as_is`], for an image already a `[1,3,H,W]` tensor in [0, 1].
    pub fn classify_unit(&self, unit: &Tensor) -> Result<Vec<f32>> {
        self.first_row(&normalize_tensor(unit, &self.preprocess))
    }

    fn first_row(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.probabilities(x)?
            .into_iter()
            .next()
            .ok_or_else(|| TlError::invalid("the network returned no probabilities"))
    }

    pub fn top(&self, probs: &[f32], k: usize) -> Vec<ClassProb> {
        top_classes(probs, &self.classes, k)
    }
}
