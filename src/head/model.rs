//! The trainable head on top of frozen features: feature standardisation (statistics of
//! the training set, stored with the weights) followed by a linear layer, or by one hidden
//! layer with dropout.
use crate::error::{Result, TlError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, nn::Module, Device, Kind, Tensor};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// 0 = linear head; otherwise the width of one hidden ReLU layer.
    pub hidden: i64,
    pub dropout: f64,
    pub in_dim: i64,
    pub num_classes: i64,
    /// Standardise features with the training set's mean and std before the first layer.
    #[serde(default = "yes")]
    pub standardize: bool,
}

fn yes() -> bool {
    true
}

pub struct Head {
    pub config: HeadConfig,
    pub vs: nn::VarStore,
    mean: Tensor,
    std: Tensor,
    fc1: nn::Linear,
    fc2: Option<nn::Linear>,
    /// Divides the logits before the softmax in [`Head::probabilities`] (temperature
    /// scaling; 1 while training).
    temperature: f64,
}

impl Head {
    /// A freshly initialised head (uses libtorch's global RNG: seed it first).
    pub fn new(config: HeadConfig, device: Device) -> Result<Head> {
        if config.in_dim <= 0 || config.num_classes < 2 {
            return Err(TlError::invalid(format!(
                "a head needs features and at least 2 classes (got {} features, {} classes)",
                config.in_dim, config.num_classes
            )));
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mean = root.zeros_no_train("feature_mean", &[config.in_dim]);
        let std = root.ones_no_train("feature_std", &[config.in_dim]);
        let (fc1, fc2) = if config.hidden > 0 {
            (
                nn::linear(
                    &root / "fc1",
                    config.in_dim,
                    config.hidden,
                    Default::default(),
                ),
                Some(nn::linear(
                    &root / "fc2",
                    config.hidden,
                    config.num_classes,
                    Default::default(),
                )),
            )
        } else {
            (
                nn::linear(
                    &root / "fc",
                    config.in_dim,
                    config.num_classes,
                    Default::default(),
                ),
                None,
            )
        };
        Ok(Head {
            config,
            vs,
            mean,
            std,
            fc1,
            fc2,
            temperature: 1.0,
        })
    }

    /// A linear head with these weights (`[classes, features]`) and biases, no
    /// standardisation: a backbone's own classifier layer.
    pub fn from_linear(weight: &Tensor, bias: &Tensor, device: Device) -> Result<Head> {
        let [classes, features] = weight.size()[..] else {
            return Err(TlError::invalid(
                "a linear layer's weight must be [classes, features]",
            ));
        };
        if bias.size() != [classes] {
            return Err(TlError::invalid("a linear layer's bias must be [classes]"));
        }
        let head = Head::new(
            HeadConfig {
                hidden: 0,
                dropout: 0.0,
                in_dim: features,
                num_classes: classes,
                standardize: false,
            },
            device,
        )?;
        tch::no_grad(|| {
            head.fc1
                .ws
                .shallow_clone()
                .copy_(&weight.to_kind(Kind::Float));
            if let Some(bs) = &head.fc1.bs {
                bs.shallow_clone().copy_(&bias.to_kind(Kind::Float));
            }
        });
        Ok(head)
    }

    /// Set the standardisation statistics from training features `[N, D]`.
    pub fn set_statistics(&mut self, features: &Tensor) {
        let (mean, std) = tch::no_grad(|| {
            (
                features.mean_dim(0, false, Kind::Float),
                features.std_dim(0, false, false),
            )
        });
        self.set_moments(&mean, &std);
    }

    /// Set the standardisation statistics from the training features' mean and std `[D]`.
    pub fn set_moments(&mut self, mean: &Tensor, std: &Tensor) {
        if !self.config.standardize {
            return;
        }
        tch::no_grad(|| {
            // Features that never vary (dead ReLUs) would divide by zero.
            let std = std.where_self(&std.gt(1e-6), &std.ones_like());
            self.mean.copy_(mean);
            self.std.copy_(&std);
        });
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.vs.device()
    }

    pub fn forward_t(&self, features: &Tensor, train: bool) -> Tensor {
        let x = (features - &self.mean) / &self.std;
        match &self.fc2 {
            None => self.fc1.forward(&x),
            Some(fc2) => fc2.forward(
                &self
                    .fc1
                    .forward(&x)
                    .relu()
                    .dropout(self.config.dropout, train),
            ),
        }
    }

    /// Sum of squared weights (biases excluded), for the L2 penalty.
    pub fn weight_norm_sq(&self) -> Tensor {
        let w1 = self.fc1.ws.square().sum(Kind::Float);
        match &self.fc2 {
            None => w1,
            Some(fc2) => w1 + fc2.ws.square().sum(Kind::Float),
        }
    }

    pub fn forward(&self, features: &Tensor) -> Tensor {
        self.forward_t(features, false)
    }

    /// Calibrated class probabilities: `softmax(logits / T)`.
    pub fn probabilities(&self, features: &Tensor) -> Tensor {
        (self.forward(features) / self.temperature).softmax(-1, Kind::Float)
    }

    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// Set the temperature (finite and positive, else refused).
    pub fn set_temperature(&mut self, temperature: f64) -> Result<()> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(TlError::invalid(format!(
                "temperature {temperature} must be a positive number"
            )));
        }
        self.temperature = temperature;
        Ok(())
    }

    /// Save the weights (safetensors), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::util::tensors::save_var_store(&self.vs, path)
    }

    /// Are all weights and statistics finite numbers?
    pub fn is_finite(&self) -> bool {
        crate::util::tensors::all_finite(&self.vs)
    }

    pub fn load(config: HeadConfig, path: &Path, device: Device) -> Result<Head> {
        if !path.is_file() {
            return Err(TlError::not_found(
                path,
                "head weights not found (is this a tl run folder?)",
            ));
        }
        let mut head = Head::new(config, device)?;
        head.vs.load(path).map_err(|e| {
            TlError::corrupt(
                path,
                format!(
                    "cannot load head weights: {}",
                    crate::error::torch_message(&e)
                ),
            )
        })?;
        if !head.is_finite() {
            return Err(TlError::corrupt(
                path,
                "head weights contain NaN or infinite values (damaged file or diverged training); re-train",
            ));
        }
        head.vs.freeze();
        Ok(head)
    }
}
