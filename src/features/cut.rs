//! A backbone cut for fine-tuning (see `scripts/export_backbones.py --cuts`): a frozen
//! trunk, run once per image and cached like features, and a trainable top — the last
//! blocks and the pooling, a TorchScript module whose parameters live in a VarStore.
use super::backbone::{verified_hash, BackboneSpec, CutPoint, LoadedModule};
use super::rows::Rows;
use crate::error::{Result, TlError, TorchContext};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// How much of the backbone `--finetune` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unfreeze {
    /// The last N blocks.
    Blocks(usize),
    /// Every block (nothing can be cached).
    All,
}

impl std::fmt::Display for Unfreeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfreeze::Blocks(n) => write!(f, "{n}"),
            Unfreeze::All => write!(f, "all"),
        }
    }
}

/// One cut point of one backbone, with its files found and checked.
#[derive(Clone, Debug)]
pub struct BackboneCut {
    pub cut: CutPoint,
    pub total_blocks: usize,
    /// The trunk as a backbone of its own (4-D output); None when every block trains.
    pub trunk: Option<BackboneSpec>,
    pub top_path: PathBuf,
    /// The shape of one input row of the top: `[C, H, W]`.
    pub row_shape: [i64; 3],
}

impl BackboneCut {
    /// The cut of `spec` for `choice`, or an error that says which cuts were exported.
    pub fn resolve(spec: &BackboneSpec, choice: Unfreeze) -> Result<BackboneCut> {
        let (Some(sidecar), Some(sidecar_path)) = (&spec.sidecar, &spec.sidecar_path) else {
            return Err(TlError::invalid(format!(
                "--finetune needs a backbone exported by scripts/export_backbones.py ({} has no sidecar)",
                spec.features_path.display()
            )));
        };
        let total = sidecar.blocks.len();
        let wanted = match choice {
            Unfreeze::All => total,
            Unfreeze::Blocks(n) => n,
        };
        let found = sidecar
            .cuts
            .iter()
            .find(|c| c.blocks == wanted && (choice == Unfreeze::All) == c.trunk_file.is_none());
        let Some(cut) = found.filter(|_| total > 0) else {
            let have: Vec<String> = sidecar
                .cuts
                .iter()
                .map(|c| match c.trunk_file {
                    None => "all".to_string(),
                    Some(_) => c.blocks.to_string(),
                })
                .collect();
            let have = if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            };
            return Err(TlError::corrupt(
                sidecar_path,
                format!(
                    "backbone '{}' has no fine-tuning cut for --finetune {choice} (exported: {have}); re-export it with scripts/export_backbones.py {} --cuts {choice} --force",
                    sidecar.name, sidecar.architecture
                ),
            ));
        };
        let dir = sidecar_path.parent().unwrap_or(Path::new("."));
        let crop = sidecar.crop_size as i64;
        let (trunk, row_shape) = match &cut.trunk_file {
            None => (None, [3, crop, crop]),
            Some(file) => {
                let [c, h, w] = cut.trunk_shape[..] else {
                    return Err(TlError::corrupt(
                        sidecar_path,
                        format!("cut {}: trunk_shape must be [C, H, W]", cut.blocks),
                    ));
                };
                let mut trunk = spec.clone();
                trunk.name = format!("{}-trunk{}", spec.name, cut.blocks);
                trunk.features_path = dir.join(file);
                trunk.classifier_path = None;
                trunk.features_hash = Default::default();
                trunk.output_rank = 4;
                if let Some(s) = trunk.sidecar.as_mut() {
                    s.features_sha256 = cut.trunk_sha256.clone();
                    s.onnx = Default::default(); // trunks run on libtorch
                    s.feature_dim = c * h * w;
                }
                (Some(trunk), [c, h, w])
            }
        };
        Ok(BackboneCut {
            cut: cut.clone(),
            total_blocks: total,
            trunk,
            top_path: dir.join(&cut.top_file),
            row_shape,
        })
    }

    /// sha256 of the top's file, checked against the sidecar.
    pub fn verified_top_hash(&self) -> Result<String> {
        verified_hash(&self.top_path, self.cut.top_sha256.as_deref(), None)
    }

    pub fn load_top(&self, device: Device) -> Result<TrainableTop> {
        self.verified_top_hash()?;
        TrainableTop::load(&self.top_path, self.row_shape, device)
    }
}

/// The trainable top: TorchScript module, its parameters in a VarStore, always in eval mode
/// (BatchNorm keeps its running statistics; the parameters still train).
pub struct TrainableTop {
    module: tch::TrainableCModule,
    pub vs: nn::VarStore,
    path: PathBuf,
    row_shape: [i64; 3],
}

impl TrainableTop {
    pub fn load(path: &Path, row_shape: [i64; 3], device: Device) -> Result<TrainableTop> {
        let vs = nn::VarStore::new(device);
        let mut module = tch::TrainableCModule::load(path, vs.root()).map_err(|e| {
            TlError::corrupt(
                path,
                format!(
                    "cannot load the trainable top: {}",
                    crate::error::torch_message(&e)
                ),
            )
        })?;
        module
            .f_set_eval()
            .torch_ctx(|| format!("{}: set_eval", path.display()))?;
        Ok(TrainableTop {
            module,
            vs,
            path: path.to_path_buf(),
            row_shape,
        })
    }

    /// Features of a batch: `rows` is `[B, C·H·W]` (cached trunk output) or `[B, C, H, W]`.
    pub fn forward(&self, rows: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.row_shape;
        let x = if rows.dim() == 2 {
            rows.view([-1, c, h, w])
        } else {
            rows.shallow_clone()
        };
        self.module
            .forward_ts(&[x])
            .torch_ctx(|| format!("{}: forward", self.path.display()))
    }

    /// Features of every row of `rows`, in batches, without gradients.
    pub fn features_of(&self, rows: &dyn Rows, batch: usize) -> Result<Tensor> {
        tch::no_grad(|| {
            let n = rows.len();
            let mut parts = Vec::new();
            for start in (0..n).step_by(batch.max(1)) {
                let idx: Vec<i64> = (start as i64..(start + batch.max(1)).min(n) as i64).collect();
                parts.push(self.forward(&rows.inputs(&idx, self.vs.device())?)?);
            }
            if parts.is_empty() {
                return Ok(Tensor::zeros([0, 0], (tch::Kind::Float, self.vs.device())));
            }
            Ok(Tensor::cat(&parts, 0))
        })
    }

    /// Save the parameters (safetensors), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::util::tensors::save_var_store(&self.vs, path)
    }

    /// Replace the parameters with fine-tuned ones saved by [`TrainableTop::save`].
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        if !path.is_file() {
            return Err(TlError::not_found(path, "fine-tuned weights not found"));
        }
        self.vs.load(path).map_err(|e| {
            TlError::corrupt(
                path,
                format!(
                    "cannot load fine-tuned weights: {}",
                    crate::error::torch_message(&e)
                ),
            )
        })?;
        let finite = crate::util::tensors::all_finite(&self.vs);
        if !finite {
            return Err(TlError::corrupt(
                path,
                "fine-tuned weights contain NaN or infinite values; re-train",
            ));
        }
        Ok(())
    }
}

/// The image-to-features network of a run: the frozen backbone, or trunk + fine-tuned top.
pub enum FeatureNet {
    Frozen(LoadedModule),
    Cut {
        trunk: Option<LoadedModule>,
        top: TrainableTop,
    },
}

impl FeatureNet {
    /// Features of normalised images `[N,3,H,W]`; differentiable with respect to the input.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeatureNet::Frozen(m) => m.forward(x),
            FeatureNet::Cut { trunk, top } => match trunk {
                Some(t) => top.forward(&t.forward(x)?),
                None => top.forward(x),
            },
        }
    }
}

/// Images decoded on demand, each as one view; only files that decoded once are listed, so a
/// failure here means the file changed during training.
pub struct DecodedRows {
    pub items: Vec<(PathBuf, crate::data::View)>,
    pub preprocess: crate::data::PreprocessConfig,
}

impl Rows for DecodedRows {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn labels(&self, _idx: &[i64], _device: Device) -> Option<Tensor> {
        None
    }
    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor> {
        use rayon::prelude::*;
        let cfg = &self.preprocess;
        let numel = cfg.numel();
        let mut data = vec![0f32; idx.len() * numel];
        data.par_chunks_mut(numel)
            .zip(idx.par_iter())
            .map(|(slot, &i)| {
                let (path, view) = &self.items[i as usize];
                let bytes = std::fs::read(path).map_err(|e| TlError::io(path, e))?;
                crate::data::augment::load_view_into(&bytes, path, cfg, *view, slot)
            })
            .collect::<Result<Vec<()>>>()?;
        let side = cfg.crop as i64;
        Ok(Tensor::from_slice(&data)
            .view([idx.len() as i64, 3, side, side])
            .to_device(device))
    }
}
