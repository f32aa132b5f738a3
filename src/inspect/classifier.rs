//! A differentiable image classifier: a trained run (backbone features + head) or a
//! backbone's full ImageNet classifier. `logits` takes normalised `[N,3,H,W]` tensors; the
//! `classify_*` methods take decoded images and say in their name whether they resize.
use crate::data::preprocess::{self, normalize_tensor, PreprocessConfig};
use crate::error::TorchContext;
use crate::error::{Result, TlError};
use crate::eval::{top_classes, ClassProb};
use crate::features::backbone::{BackboneSpec, LoadedModule};
use crate::features::{FeatureNet, FrozenModel};
use crate::head::{Head, UnknownJudge};
use crate::model_file::{ModelFormat, ModelSidecar};
use crate::run::Run;
use crate::runtime::{process_settings, Runtime};
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
        judge: Option<UnknownJudge>,
    },
    ImageNet {
        classifier: LoadedModule,
    },
    /// A frozen run on another engine (ONNX Runtime): inference only, no input gradients.
    RunInference {
        frozen: std::sync::Mutex<FrozenModel>,
        head: Head,
        judge: Option<UnknownJudge>,
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
    /// When an image is "unknown" (None: the classifier has no judge, or it is off).
    pub unknown: Option<UnknownRule>,
}

/// Above `threshold` an image's unknown score says "unknown".
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnknownRule {
    pub threshold: f64,
    /// The share of the run's validation images accepted at that threshold.
    pub accept: f64,
}

/// Whether and how to judge "unknown" (trained runs and their exports only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnknownChoice {
    pub enabled: bool,
    /// A new acceptance instead of the run's (its threshold follows from the run's
    /// calibration scores).
    pub accept: Option<f64>,
}

impl Default for UnknownChoice {
    fn default() -> Self {
        UnknownChoice {
            enabled: true,
            accept: None,
        }
    }
}

/// Calibrated probabilities `[N, C]` and, with a judge, the unknown scores `[N]`.
pub struct Answer {
    pub probabilities: Tensor,
    pub unknown_scores: Option<Tensor>,
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
    /// runs on the runtime's engine (ONNX Runtime where `--engine` picks it), and runs and
    /// exported models judge "unknown" as `unknown` says.
    pub fn load_for_inference(
        choice: &NetworkChoice,
        rt: &Runtime,
        unknown: UnknownChoice,
    ) -> Result<Classifier> {
        let mut classifier = match choice {
            NetworkChoice::Run(dir) => Classifier::run_for_inference(&Run::open(dir)?, rt)?,
            other => Classifier::load(other, rt)?,
        };
        classifier.configure_unknown(choice, unknown, rt.device)?;
        Ok(classifier)
    }

    /// Attach the run's judge (or, for an exported model, check what it records).
    fn configure_unknown(
        &mut self,
        choice: &NetworkChoice,
        unknown: UnknownChoice,
        device: Device,
    ) -> Result<()> {
        if !unknown.enabled {
            self.unknown = None;
            return Ok(());
        }
        match choice {
            NetworkChoice::Run(dir) => self.attach_judge(&Run::open(dir)?, unknown.accept, device),
            NetworkChoice::Exported(path) => {
                if unknown.accept.is_some() && self.unknown.is_some() {
                    return Err(TlError::corrupt(
                        path,
                        "an exported model's unknown threshold was fixed at export; pass --accept to `tl export`",
                    ));
                }
                Ok(())
            }
            NetworkChoice::Backbone(_) => Ok(()),
        }
    }

    /// Load the run's unknown judge, at `accept` or the run's own threshold.
    pub fn attach_judge(&mut self, run: &Run, accept: Option<f64>, device: Device) -> Result<()> {
        let Some((judge, threshold)) = run.load_judge(accept, device)? else {
            return Ok(());
        };
        let rule = UnknownRule {
            threshold,
            accept: accept
                .or(run.config.unknown.as_ref().map(|u| u.accept))
                .unwrap_or(1.0),
        };
        match &mut self.net {
            Network::Run { judge: slot, .. } | Network::RunInference { judge: slot, .. } => {
                *slot = Some(judge);
                self.unknown = Some(rule);
            }
            _ => {}
        }
        Ok(())
    }

    /// A run on the runtime's engine: libtorch, or another engine for a frozen run; a
    /// warning when JPEGs are decoded otherwise than at training (`--decode`).
    fn run_for_inference(run: &Run, rt: &Runtime) -> Result<Classifier> {
        let mut classifier = Classifier::run_on_engine(run, rt)?;
        let (then, now) = (run.config.extract.decode, process_settings().decode);
        if then != now {
            let note = format!(
                "the run was trained with --decode {}, this uses --decode {} (large JPEGs are decoded otherwise; pass --decode {} for the training inputs)",
                then.label(),
                now.label(),
                then.label()
            );
            classifier.warning = Some(match classifier.warning.take() {
                Some(w) => format!("{w}; {note}"),
                None => note,
            });
        }
        Ok(classifier)
    }

    fn run_on_engine(run: &Run, rt: &Runtime) -> Result<Classifier> {
        if run.config.finetune.is_some() {
            return Classifier::from_run(run, rt.device);
        }
        let spec = run.on_engine(run.backbone()?, rt.engine, rt.precision, rt.device)?;
        if spec.engine == crate::features::Engine::Torch {
            return Classifier::from_run(run, rt.device);
        }
        let frozen = spec.load_frozen(rt.device, rt.threads, true)?;
        Ok(Classifier {
            net: Network::RunInference {
                frozen: std::sync::Mutex::new(frozen),
                head: run.load_head(rt.device)?,
                judge: None,
            },
            classes: run.classes.clone(),
            preprocess: run.config.preprocess,
            description: format!(
                "run {} ({} on {} + head)",
                run.dir.display(),
                run.config.backbone.name,
                spec.engine.label_with(spec.precision)
            ),
            device: rt.device,
            warning: spec.weights_warning(),
            unknown: None,
        })
    }

    /// A model written by `tl export` (TorchScript), checked against its sidecar.
    pub fn from_exported(path: &Path, device: Device) -> Result<Classifier> {
        if !path.is_file() {
            return Err(TlError::not_found(path, "model file not found"));
        }
        let sidecar = ModelSidecar::load(path)?;
        if sidecar.model_format != ModelFormat::TorchScript {
            return Err(TlError::corrupt(
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
            unknown: sidecar.unknown.as_ref().map(|u| UnknownRule {
                threshold: u.threshold,
                accept: u.accept,
            }),
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
                judge: None,
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
            unknown: None,
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
            unknown: None,
        })
    }

    /// Calibrated probabilities (and unknown scores, with a judge) for normalised input.
    pub fn answer(&self, x: &Tensor) -> Result<Answer> {
        let judged = |head: &Head, judge: &Option<UnknownJudge>, features: Tensor| Answer {
            probabilities: head.probabilities(&features),
            unknown_scores: judge.as_ref().map(|j| j.score(&features)),
        };
        match &self.net {
            Network::Run {
                features,
                head,
                judge,
            } => Ok(judged(head, judge, features.forward(x)?)),
            Network::RunInference {
                frozen,
                head,
                judge,
            } => Ok(judged(head, judge, self.frozen_features(frozen, x)?)),
            Network::Exported { module, path } => {
                let (probabilities, unknown_scores) = self.exported(module, path, x)?;
                Ok(Answer {
                    probabilities,
                    unknown_scores,
                })
            }
            Network::ImageNet { .. } => Ok(Answer {
                probabilities: self.logits(x)?.softmax(-1, tch::Kind::Float),
                unknown_scores: None,
            }),
        }
    }

    /// Features of normalised input from a frozen backbone on another engine.
    fn frozen_features(
        &self,
        frozen: &std::sync::Mutex<FrozenModel>,
        x: &Tensor,
    ) -> Result<Tensor> {
        let n = x.size()[0] as usize;
        let data = Vec::<f32>::try_from(&x.detach().to_device(Device::Cpu).contiguous().view([-1]))
            .torch_ctx(|| "reading the input batch".into())?;
        let features = frozen
            .lock()
            .map_err(|_| TlError::invalid("the backbone failed in another thread"))?
            .run(&data, n, &self.preprocess, Device::Cpu, false)?;
        let d = (features.len() / n.max(1)) as i64;
        Ok(Tensor::from_slice(&features)
            .view([n as i64, d])
            .to_device(self.device))
    }

    /// An exported model's probabilities and, when it has them, unknown scores.
    fn exported(
        &self,
        module: &tch::CModule,
        path: &Path,
        x: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        // An exported model normalises inside.
        let input = tch::IValue::Tensor(preprocess::denormalize_tensor(x, &self.preprocess));
        let out = module
            .forward_is(&[input])
            .torch_ctx(|| format!("{}: forward", path.display()))?;
        let (probs, scores) = match out {
            tch::IValue::Tensor(p) => (p, None),
            tch::IValue::Tuple(mut parts) if parts.len() == 2 => {
                match (parts.remove(0), parts.remove(0)) {
                    (tch::IValue::Tensor(p), tch::IValue::Tensor(s)) => (p, Some(s)),
                    _ => {
                        return Err(TlError::corrupt(
                            path,
                            "returns a tuple that is not two tensors",
                        ))
                    }
                }
            }
            _ => {
                return Err(TlError::corrupt(
                    path,
                    "returns neither probabilities nor (probabilities, unknown score)",
                ))
            }
        };
        if probs.dim() != 2 || probs.size()[1] != self.classes.len() as i64 {
            return Err(TlError::corrupt(
                path,
                format!(
                    "returns shape {:?}; its sidecar lists {} classes",
                    probs.size(),
                    self.classes.len()
                ),
            ));
        }
        if self.unknown.is_some() != scores.is_some() {
            return Err(TlError::corrupt(
                path,
                "its sidecar and its outputs disagree on the unknown score",
            ));
        }
        Ok((probs, scores))
    }

    /// Logits for normalised input; differentiable with respect to the input. Not
    /// temperature-scaled: dreams and attacks work on the network's own logits.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match &self.net {
            Network::Run { features, head, .. } => Ok(head.forward(&features.forward(x)?)),
            Network::ImageNet { classifier } => {
                let out = classifier.forward(x)?;
                if out.size()[1] != self.classes.len() as i64 {
                    return Err(TlError::corrupt(
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
            Network::RunInference { frozen, head, .. } => {
                Ok(head.forward(&self.frozen_features(frozen, x)?))
            }
            Network::Exported { module, path } => {
                let (probs, _) = self.exported(module, path, x)?;
                // Log-probabilities are logits up to a constant: the softmax gives them back.
                Ok(probs.clamp_min(1e-30).log())
            }
        }
    }

    /// Calibrated class probabilities of a normalised batch, without gradients.
    pub fn probabilities(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        let answer = tch::no_grad(|| self.answer(&x.to_device(self.device)))?;
        crate::util::tensors::rows(&answer.probabilities)
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
