//! Tensors to plain data: safetensors bytes (written with [`super::write_atomic`] by every
//! caller) and the rows of a `[N, C]` tensor.
use crate::error::{Result, TlError, TorchContext};
use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Kind, Tensor};

/// Serialise named tensors (float32, float16 or int64) to the safetensors format.
pub fn to_safetensors(named: &[(String, Tensor)]) -> Result<Vec<u8>> {
    to_safetensors_with(named, None)
}

/// [`to_safetensors`] with string metadata in the file's header.
pub fn to_safetensors_with(
    named: &[(String, Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(named.len());
    for (name, t) in named {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let flat = t.view([-1]);
        let (dtype, bytes) = match t.kind() {
            Kind::Float => (
                Dtype::F32,
                Vec::<f32>::try_from(&flat)
                    .torch_ctx(|| format!("tensor {name}"))?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            Kind::Int64 => (
                Dtype::I64,
                Vec::<i64>::try_from(&flat)
                    .torch_ctx(|| format!("tensor {name}"))?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            Kind::Half => (
                Dtype::F16,
                Vec::<i16>::try_from(&flat.view_dtype(Kind::Int16))
                    .torch_ctx(|| format!("tensor {name}"))?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            other => {
                return Err(TlError::invalid(format!(
                    "tensor {name}: cannot save {other:?} as safetensors"
                )))
            }
        };
        owned.push((name.clone(), dtype, shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| TlError::invalid(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, &metadata)
        .map_err(|e| TlError::invalid(format!("cannot serialise tensors: {e}")))
}

/// The rows of a `[N, C]` float tensor.
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let size = t.size();
    if size.len() != 2 {
        return Err(TlError::invalid(format!(
            "expected a [batch, classes] tensor, got shape {size:?}"
        )));
    }
    let flat = Vec::<f32>::try_from(t.view([-1])).torch_ctx(|| "reading tensor".into())?;
    let c = size[1].max(1) as usize;
    Ok(flat.chunks(c).map(<[f32]>::to_vec).collect())
}

/// Save every variable of a VarStore (sorted by name) as safetensors, atomically.
pub fn save_var_store(vs: &tch::nn::VarStore, path: &std::path::Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = to_safetensors(&named)?;
    super::write_atomic(path, &bytes)
}

/// Are all variables of a VarStore finite numbers?
pub fn all_finite(vs: &tch::nn::VarStore) -> bool {
    vs.variables()
        .values()
        .all(|t| tch::no_grad(|| t.isfinite().all().int64_value(&[]) == 1))
}
