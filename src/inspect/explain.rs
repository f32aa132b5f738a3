//! Where a run looked, and what a layer sees in a photo.
//!
//! **CAM** (Zhou et al. 2016) is exact for a frozen backbone whose features are the global
//! average of its last layer (MobileNetV2, ResNet50) under a linear head: the class score is
//! the mean over positions of the head's linear part applied to each position's activations,
//! so that map is where the score comes from. It is computed here as `head(a) − head(0)` at
//! each position `a` of the last layer (standardisation included, the constant dropped).
//! **Grad-CAM** (Selvaraju et al. 2017) weighs a layer's channels by the mean gradient of the
//! class logit: through the backbone's layer file for pooled frozen runs (any layer), or
//! through a cut — trunk output → top → head — for VGG16 (whose features are not a pooled
//! layer) and fine-tuned runs (the tuned top). For a linear head on a pooled backbone,
//! Grad-CAM on the last layer is `ReLU(CAM)/(h·w)`: the same map after normalisation, a check
//! the tests make. Maps are returned raw and signed, `[h, w]` at the layer's resolution
//! (Grad-CAM's ReLU is left to the display, so that a raw map resized to the crop is the
//! same linear function for both methods); [`normalised`] keeps the positive evidence and
//! scales it to [0, 1] (for both methods alike).
use crate::error::{Result, TlError, TorchContext};
use crate::features::backbone::{LayerNet, LoadedModule};
use crate::features::cut::TrainableTop;
use crate::features::onnx::OnnxModel;
use crate::features::Engine;
use crate::head::Head;
use serde::Serialize;
use tch::{Kind, Tensor};

/// How a class map is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Cam,
    GradCam,
}

impl Method {
    /// The method's name in text: "CAM" or "Grad-CAM".
    pub fn label(self) -> &'static str {
        match self {
            Method::Cam => "CAM",
            Method::GradCam => "Grad-CAM",
        }
    }
}

/// `--method`: `auto` is CAM where it is exact, Grad-CAM otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MethodChoice {
    #[default]
    Auto,
    Cam,
    GradCam,
}

/// The parts of a run a map is computed from.
pub enum MapNet<'a> {
    /// A frozen backbone whose features are the mean of its last layer: every layer of its
    /// layer file is reachable, the head sits on the pooled last layer.
    Pooled {
        layers: &'a LayerNet,
        head: &'a Head,
        /// The last layer on ONNX Runtime (CAM's maps from it instead of libtorch).
        last_onnx: Option<&'a std::sync::Mutex<OnnxModel>>,
    },
    /// Trunk (frozen; None when every block trains) → top → head: Grad-CAM on the trunk's
    /// output.
    Cut {
        trunk: Option<&'a LoadedModule>,
        top: &'a TrainableTop,
        head: &'a Head,
        /// The name of the layer whose output the trunk gives (for reports).
        layer: String,
    },
}

/// One class map and how it was made.
pub struct ClassMap {
    /// `[h, w]` float, raw and signed (positive: evidence for the class).
    pub map: Tensor,
    pub method: Method,
    pub layer: String,
    /// The library that computed the layer's activations.
    pub engine: Engine,
}

impl MapNet<'_> {
    /// The layers a map can be taken at, bottom to top.
    pub fn layer_names(&self) -> Vec<String> {
        match self {
            MapNet::Pooled { layers, .. } => layers.names.clone(),
            MapNet::Cut { layer, .. } => vec![layer.clone()],
        }
    }

    /// Whether CAM is exact here: a pooled backbone, a linear head, the last layer.
    pub fn cam_exact(&self, layer: usize) -> bool {
        match self {
            MapNet::Pooled { layers, head, .. } => {
                head.config.hidden == 0 && layer + 1 == layers.names.len()
            }
            MapNet::Cut { .. } => false,
        }
    }

    /// The map of `class` for one normalised image `x` (`[1,3,S,S]`) at layer `layer`
    /// (an index into [`MapNet::layer_names`]).
    pub fn class_map(
        &self,
        x: &Tensor,
        class: usize,
        choice: MethodChoice,
        layer: usize,
    ) -> Result<ClassMap> {
        let names = self.layer_names();
        let name = names
            .get(layer)
            .cloned()
            .ok_or_else(|| TlError::invalid(format!("no layer {layer}")))?;
        let method = match choice {
            MethodChoice::Auto if self.cam_exact(layer) => Method::Cam,
            MethodChoice::Auto | MethodChoice::GradCam => Method::GradCam,
            MethodChoice::Cam if self.cam_exact(layer) => Method::Cam,
            MethodChoice::Cam => {
                return Err(TlError::invalid(format!(
                    "CAM is exact only on the last layer of a frozen pooled backbone under a linear head; at '{name}' of this run use --method gradcam (or auto)"
                )))
            }
        };
        let (map, engine) = match (method, self) {
            (
                Method::Cam,
                MapNet::Pooled {
                    layers,
                    head,
                    last_onnx,
                },
            ) => cam(layers, head, *last_onnx, x, class)?,
            (_, MapNet::Pooled { layers, head, .. }) => (
                pooled_gradcam(layers, head, x, class, layer)?,
                Engine::Torch,
            ),
            (
                _,
                MapNet::Cut {
                    trunk, top, head, ..
                },
            ) => (cut_gradcam(*trunk, top, head, x, class)?, Engine::Torch),
        };
        Ok(ClassMap {
            map,
            method,
            layer: name,
            engine,
        })
    }
}

/// The last layer's activations `[1,C,h,w]` of `x`: from ONNX Runtime when given, else
/// from the layer file.
fn last_layer(
    layers: &LayerNet,
    onnx: Option<&std::sync::Mutex<OnnxModel>>,
    x: &Tensor,
) -> Result<(Tensor, Engine)> {
    if let Some(model) = onnx {
        let x = x
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let s = x.size();
        let data = Vec::<f32>::try_from(&x.flatten(0, -1)).torch_ctx(|| "image".into())?;
        let shape = [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize];
        let mut m = model.lock().unwrap_or_else(|e| e.into_inner());
        let (dims, values) = m.run(&data, shape)?;
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        if dims.len() != 4 {
            return Err(TlError::corrupt(&m.path, "expected an [N,C,h,w] output"));
        }
        return Ok((
            Tensor::from_slice(&values).view(dims.as_slice()),
            Engine::Onnx,
        ));
    }
    let acts = tch::no_grad(|| layers.forward(x))?;
    let last = acts
        .into_iter()
        .last()
        .ok_or_else(|| TlError::invalid("the layer file returned no layer"))?;
    Ok((last, Engine::Torch))
}

/// `head(a) − head(0)` at every position `a` of the last layer: `[h, w]`.
fn cam(
    layers: &LayerNet,
    head: &Head,
    onnx: Option<&std::sync::Mutex<OnnxModel>>,
    x: &Tensor,
    class: usize,
) -> Result<(Tensor, Engine)> {
    let (last, engine) = last_layer(layers, onnx, x)?;
    let last = last.to_device(head.device());
    tch::no_grad(|| {
        let (c, h, w) = (last.size()[1], last.size()[2], last.size()[3]);
        let positions = last.get(0).reshape([c, h * w]).transpose(0, 1);
        let zero = Tensor::zeros([1, c], (Kind::Float, positions.device()));
        let scores = head.forward(&positions) - head.forward(&zero);
        Ok((scores.select(1, class as i64).reshape([h, w]), engine))
    })
}

/// Grad-CAM at `layer` through the layer file, the head on the pooled last layer.
fn pooled_gradcam(
    layers: &LayerNet,
    head: &Head,
    x: &Tensor,
    class: usize,
    layer: usize,
) -> Result<Tensor> {
    let x = x.detach().set_requires_grad(true);
    let acts = layers.forward(&x)?;
    let last = acts
        .last()
        .ok_or_else(|| TlError::invalid("the layer file returned no layer"))?;
    let logits = head.forward(&last.mean_dim([2i64, 3].as_slice(), false, Kind::Float));
    weigh_by_gradient(&logits, class, &acts[layer])
}

/// Grad-CAM on the trunk's output, through the top and the head.
fn cut_gradcam(
    trunk: Option<&LoadedModule>,
    top: &TrainableTop,
    head: &Head,
    x: &Tensor,
    class: usize,
) -> Result<Tensor> {
    let a = match trunk {
        Some(t) => tch::no_grad(|| t.forward(x))?,
        None => x.shallow_clone(),
    };
    let a = a.detach().set_requires_grad(true);
    let logits = head.forward(&top.forward(&a)?);
    weigh_by_gradient(&logits, class, &a)
}

/// `Σ_k mean(∂logit/∂A_k) · A_k` (Grad-CAM before its ReLU) for the one image of `logits`
/// and `acts` `[1,C,h,w]`.
fn weigh_by_gradient(logits: &Tensor, class: usize, acts: &Tensor) -> Result<Tensor> {
    let target = logits.get(0).get(class as i64);
    let grads = Tensor::f_run_backward(&[&target], &[acts], false, false)
        .torch_ctx(|| "Grad-CAM gradients".into())?;
    let grad = grads
        .into_iter()
        .next()
        .ok_or_else(|| TlError::invalid("no gradient for the layer"))?;
    let weights = grad.mean_dim([2i64, 3].as_slice(), true, Kind::Float);
    Ok(tch::no_grad(|| {
        (weights * acts.detach())
            .sum_dim_intlist(1, false, Kind::Float)
            .get(0)
    }))
}

/// The positive part of a map scaled to [0, 1] (all zeros stay zeros).
pub fn normalised(map: &Tensor) -> Tensor {
    let pos = map.relu();
    let max = pos.max().double_value(&[]);
    if max > 0.0 {
        pos / max
    } else {
        pos
    }
}

/// A map `[h, w]` resized (bilinear) to `[side, side]`: the crop's coordinates.
pub fn to_crop(map: &Tensor, side: i64) -> Tensor {
    map.unsqueeze(0)
        .unsqueeze(0)
        .upsample_bilinear2d([side, side], false, None, None)
        .squeeze_dim(0)
        .squeeze_dim(0)
}

/// Pearson correlation of two maps.
pub fn correlation(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (
        a.flatten(0, -1).to_kind(Kind::Double),
        b.flatten(0, -1).to_kind(Kind::Double),
    );
    let (a, b) = (&a - a.mean(Kind::Double), &b - b.mean(Kind::Double));
    let denom = (a.square().sum(Kind::Double) * b.square().sum(Kind::Double)).sqrt();
    let d = denom.double_value(&[]);
    if d > 0.0 {
        (a * b).sum(Kind::Double).double_value(&[]) / d
    } else {
        0.0
    }
}

/// The channels of one layer's activations `[1,C,h,w]` ordered by mean activation, highest
/// first: (channel, mean) for the first `n`.
pub fn strongest_channels(acts: &Tensor, n: usize) -> Result<Vec<(i64, f64)>> {
    let means = acts
        .get(0)
        .mean_dim([1i64, 2].as_slice(), false, Kind::Float);
    let means = Vec::<f32>::try_from(&means).torch_ctx(|| "channel means".into())?;
    let mut order: Vec<(i64, f64)> = means
        .iter()
        .enumerate()
        .map(|(i, &m)| (i as i64, m as f64))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(n);
    Ok(order)
}
