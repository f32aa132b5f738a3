//! Rows fetched by index: the one interface every training loop reads through. Features or
//! labels held as tensors ([`TensorRows`]), entries of the feature cache read a mini-batch at
//! a time ([`StreamedRows`], so that training on more features than fit in memory keeps a
//! bounded footprint), a fine-tuned top's inputs (cached trunk outputs [`CachedRows`], or
//! images decoded on demand, `DecodedRows` in `cut`) paired with labels ([`Labelled`]).
//! Rows without labels (a top's inputs) serve forward passes; training asks for labels.
use crate::error::{Result, TlError};
use crate::features::cache::{FeatureCache, Location};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Rows fetched by index.
pub trait Rows {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inputs `[len, …]` (float) of rows `idx`, on `device`.
    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor>;
    /// Labels `[len]` (int64) of rows `idx`, on `device`; None for rows without labels.
    fn labels(&self, idx: &[i64], device: Device) -> Option<Tensor>;
    /// Inputs and labels of rows `idx`; an error for rows without labels.
    fn batch(&self, idx: &[i64], device: Device) -> Result<(Tensor, Tensor)> {
        let x = self.inputs(idx, device)?;
        let y = self
            .labels(idx, device)
            .ok_or_else(|| TlError::invalid("these rows have no labels to train on"))?;
        Ok((x, y))
    }
    /// Per-feature mean and (population) standard deviation, as `[D]` float tensors.
    fn moments(&self, device: Device) -> Result<(Tensor, Tensor)> {
        streamed_moments(self, device)
    }
}

fn select(t: &Tensor, idx: &[i64], device: Device) -> Tensor {
    let idx = Tensor::from_slice(idx).to_device(t.device());
    t.index_select(0, &idx).to_device(device)
}

/// Features `[N, D]` and labels `[N]` held as tensors.
pub struct TensorRows<'a> {
    pub x: &'a Tensor,
    pub y: &'a Tensor,
}

impl Rows for TensorRows<'_> {
    fn len(&self) -> usize {
        self.x.size()[0] as usize
    }

    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor> {
        Ok(select(self.x, idx, device))
    }

    fn labels(&self, idx: &[i64], device: Device) -> Option<Tensor> {
        Some(select(self.y, idx, device))
    }

    fn moments(&self, device: Device) -> Result<(Tensor, Tensor)> {
        tch::no_grad(|| {
            let mean = self.x.mean_dim(0, false, Kind::Float);
            let std = self.x.std_dim(0, false, false);
            Ok((mean.to_device(device), std.to_device(device)))
        })
    }
}

impl<R: Rows + ?Sized> Rows for &R {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor> {
        (**self).inputs(idx, device)
    }

    fn labels(&self, idx: &[i64], device: Device) -> Option<Tensor> {
        (**self).labels(idx, device)
    }

    fn moments(&self, device: Device) -> Result<(Tensor, Tensor)> {
        (**self).moments(device)
    }
}

/// Mean and standard deviation in one pass of 4096-row chunks, summed in f64.
fn streamed_moments<R: Rows + ?Sized>(rows: &R, device: Device) -> Result<(Tensor, Tensor)> {
    let n = rows.len() as i64;
    let (mut sum, mut sum_sq): (Option<Tensor>, Option<Tensor>) = (None, None);
    let order: Vec<i64> = (0..n).collect();
    for chunk in order.chunks(4096) {
        let x = rows.inputs(chunk, Device::Cpu)?;
        let x = x.to_kind(Kind::Double);
        let s = x.sum_dim_intlist(0, false, Kind::Double);
        let q = x.square().sum_dim_intlist(0, false, Kind::Double);
        sum = Some(match sum {
            Some(t) => t + s,
            None => s,
        });
        sum_sq = Some(match sum_sq {
            Some(t) => t + q,
            None => q,
        });
    }
    let (Some(sum), Some(sum_sq)) = (sum, sum_sq) else {
        return Err(TlError::invalid("no training rows"));
    };
    let mean = &sum / n as f64;
    let var = (&sum_sq / n as f64 - mean.square()).clamp_min(0.0);
    Ok((
        mean.to_kind(Kind::Float).to_device(device),
        var.sqrt().to_kind(Kind::Float).to_device(device),
    ))
}

/// Rows stored in the feature cache: read (and checked) when a mini-batch needs them.
pub struct StreamedRows {
    cache: FeatureCache,
    locations: Vec<Location>,
    labels: Vec<i64>,
    dim: usize,
}

impl StreamedRows {
    /// `entries`: each row's place in `cache` and its label. All must hold `dim` features.
    pub fn new(cache: FeatureCache, entries: Vec<(Location, i64)>, dim: usize) -> Result<Self> {
        if let Some((loc, _)) = entries.iter().find(|(l, _)| cache.dim_at(*l) != Some(dim)) {
            return Err(TlError::invalid(format!(
                "cache entry {loc:?} does not hold {dim} features"
            )));
        }
        let (locations, labels) = entries.into_iter().unzip();
        Ok(StreamedRows {
            cache,
            locations,
            labels,
            dim,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn labels(&self) -> &[i64] {
        &self.labels
    }
}

impl Rows for StreamedRows {
    fn len(&self) -> usize {
        self.locations.len()
    }

    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor> {
        let d = self.dim;
        let mut data = vec![0f32; idx.len() * d];
        data.par_chunks_mut(d)
            .zip(idx.par_iter())
            .try_for_each(|(out, &i)| {
                let loc = *self.locations.get(i as usize).ok_or_else(|| {
                    TlError::invalid(format!("feature cache: row {i} out of range"))
                })?;
                self.cache.read_into(loc, out)
            })?;
        let x = Tensor::from_slice(&data).view([idx.len() as i64, d as i64]);
        Ok(x.to_device(device))
    }

    fn labels(&self, idx: &[i64], device: Device) -> Option<Tensor> {
        let labels: Option<Vec<i64>> = idx
            .iter()
            .map(|&i| self.labels.get(i as usize).copied())
            .collect();
        Some(Tensor::from_slice(&labels?).to_device(device))
    }
}

/// Rows held in one `[M, …]` tensor, without labels (a fine-tuned top's inputs).
pub struct CachedRows(pub Tensor);

impl Rows for CachedRows {
    fn len(&self) -> usize {
        self.0.size()[0] as usize
    }
    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor> {
        Ok(select(&self.0, idx, device))
    }
    fn labels(&self, _idx: &[i64], _device: Device) -> Option<Tensor> {
        None
    }
}

/// Rows and their labels `[len]`: unlabelled inputs made trainable.
pub struct Labelled<'a> {
    pub rows: &'a dyn Rows,
    pub y: &'a Tensor,
}

impl Rows for Labelled<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn inputs(&self, idx: &[i64], device: Device) -> Result<Tensor> {
        self.rows.inputs(idx, device)
    }
    fn labels(&self, idx: &[i64], device: Device) -> Option<Tensor> {
        Some(select(self.y, idx, device))
    }
    fn moments(&self, device: Device) -> Result<(Tensor, Tensor)> {
        self.rows.moments(device)
    }
}
