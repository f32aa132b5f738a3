//! What `tl explain` maps through, loaded once: a run's head and feature network, the
//! backbone's layer file, a cut for Grad-CAM where the layer file cannot serve, the last
//! layer on ONNX Runtime; and the heat maps of a run's worst images for its report pages.
use crate::data::decode::decode_rgb;
use crate::data::preprocess::{resized_tensor, PreprocessConfig};
use crate::error::{Result, TlError};
use crate::features::backbone::{BackboneSpec, LayerNet, LoadedModule};
use crate::features::cut::{BackboneCut, FeatureNet, TrainableTop, Unfreeze};
use crate::features::onnx::OnnxModel;
use crate::head::Head;
use crate::html::HeatPair;
use crate::inspect::explain::{normalised, to_crop, ClassMap, MapNet, Method, MethodChoice};
use crate::inspect::heatmap;
use crate::run::Run;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Opacity of the heat over the photo.
const OVERLAY_ALPHA: f32 = 0.45;

/// What a class map is computed from, loaded once.
pub(super) struct Loaded {
    pub(super) description: String,
    pub(super) preprocess: PreprocessConfig,
    pub(super) classes: Vec<String>,
    /// The run's head and feature network (None for a backbone: feature maps only).
    pub(super) run: Option<(Head, FeatureNet)>,
    pub(super) layers: Option<LayerNet>,
    /// The cut for Grad-CAM where the layer file cannot serve (VGG, fine-tuned runs).
    pub(super) cut: Option<(Option<LoadedModule>, CutTop)>,
    /// The last layer on ONNX Runtime, for CAM.
    pub(super) last_onnx: Option<Mutex<OnnxModel>>,
    pub(super) warning: Option<String>,
}

/// A top for Grad-CAM: the run's own (fine-tuned), or the backbone's original one; with the
/// name of the layer whose output it takes.
pub(super) enum CutTop {
    Run(String),
    Loaded(TrainableTop, String),
}

/// A run's parts for maps; `onnx_threads`: CAM's last layer on ONNX Runtime with that many
/// threads where the backbone has it and the library loads (None: libtorch only).
pub(super) fn load_run(
    run: &Run,
    maps: bool,
    device: Device,
    onnx_threads: Option<usize>,
) -> Result<Loaded> {
    let spec = run.backbone()?;
    let layers = match spec.load_layers(device) {
        Ok(l) => Some(l),
        Err(e) if maps => return Err(e),
        Err(_) => None,
    };
    let features = run.feature_net(device)?;
    let cut = match (&features, &run.config.finetune) {
        // A fine-tuned run: Grad-CAM through its own tuned top.
        (FeatureNet::Cut { .. }, Some(f)) => Some((
            None,
            CutTop::Run(layer_before(&f.first_block, layers.as_ref())),
        )),
        _ => None,
    };
    Ok(Loaded {
        description: format!("run {} ({})", run.dir.display(), run.config.backbone.name),
        preprocess: run.config.preprocess,
        classes: run.classes.clone(),
        run: Some((run.load_head(device)?, features)),
        layers,
        cut,
        last_onnx: match onnx_threads {
            Some(threads) => last_layer_onnx(&spec, threads)?,
            None => None,
        },
        warning: spec.weights_warning(),
    })
    .and_then(|mut l| {
        if l.cut.is_none() && !maps {
            l.cut = original_cut(&spec, device, l.layers.as_ref())?;
        }
        Ok(l)
    })
}

/// A backbone's ImageNet classifier for class maps: its feature extractor, and its own last
/// layer as a linear head (`NAME.linear.safetensors`); libtorch only.
pub(super) fn load_backbone(spec: &BackboneSpec, device: Device) -> Result<Loaded> {
    let Some((weight, bias)) = spec.linear_layer()? else {
        return Err(TlError::invalid(format!(
            "backbone '{}' was exported without its classifier's last layer (NAME.linear.safetensors); re-export it with scripts/export_backbones.py --force, or use --run RUN",
            spec.name
        )));
    };
    let layers = spec.load_layers(device).ok();
    let head = Head::from_linear(&weight, &bias, device)?;
    let cut = original_cut(spec, device, layers.as_ref())?;
    Ok(Loaded {
        description: format!("{} ImageNet classifier", spec.name),
        preprocess: spec.preprocess(),
        classes: spec.class_names().to_vec(),
        run: Some((head, FeatureNet::Frozen(spec.load_features(device)?))),
        layers,
        cut,
        last_onnx: None,
        warning: spec.weights_warning(),
    })
}

/// `NAME.last_layer.onnx` in an ONNX Runtime session, when the export has it and the library
/// loads (otherwise libtorch computes the maps).
pub(super) fn last_layer_onnx(
    spec: &BackboneSpec,
    threads: usize,
) -> Result<Option<Mutex<OnnxModel>>> {
    let Some(path) = spec.last_layer_onnx()? else {
        return Ok(None);
    };
    if crate::features::onnx::library().is_err() {
        return Ok(None);
    }
    let model = OnnxModel::load(&path, threads, false)?;
    Ok(Some(Mutex::new(model)))
}

/// The backbone's own one-block cut, for Grad-CAM on frozen runs whose features are not a
/// pooled layer (None when the backbone has no cut exported).
pub(super) fn original_cut(
    spec: &BackboneSpec,
    device: Device,
    layers: Option<&LayerNet>,
) -> Result<Option<(Option<LoadedModule>, CutTop)>> {
    let Ok(cut) = BackboneCut::resolve(spec, Unfreeze::Blocks(1)) else {
        return Ok(None);
    };
    let trunk = match &cut.trunk {
        Some(t) => Some(t.load_features(device)?),
        None => None,
    };
    let name = layer_before(&cut.cut.first_block, layers);
    Ok(Some((trunk, CutTop::Loaded(cut.load_top(device)?, name))))
}

/// The name of the layer whose output feeds the block `first_block`.
fn layer_before(first_block: &str, layers: Option<&LayerNet>) -> String {
    layers
        .and_then(|l| l.names.iter().position(|n| n == first_block))
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| layers.map(|l| l.names[i].clone()))
        .unwrap_or_else(|| match first_block {
            // Every block trains: the map is on the image itself.
            _ if layers.is_some_and(|l| l.names.first().is_some_and(|n| n == first_block)) => {
                "image".to_string()
            }
            _ => format!("input of {first_block}"),
        })
}

/// The map net for this run and layer: the layer file for pooled frozen runs, else the cut.
pub(super) fn map_net<'a>(
    l: &'a Loaded,
    x: &Tensor,
    layer: Option<&str>,
) -> Result<(MapNet<'a>, usize)> {
    let Some((head, features)) = &l.run else {
        return Err(TlError::invalid("class maps need a trained run"));
    };
    if let (Some(layers), FeatureNet::Frozen(f)) = (&l.layers, features) {
        if pooled(layers, f, x)? {
            let index = match layer {
                Some(name) => layers.index_of(name)?,
                None => layers.names.len() - 1,
            };
            let net = MapNet::Pooled {
                layers,
                head,
                last_onnx: l.last_onnx.as_ref(),
            };
            return Ok((net, index));
        }
    }
    let net = match (&l.cut, features) {
        (Some((_, CutTop::Run(name))), FeatureNet::Cut { trunk, top }) => MapNet::Cut {
            trunk: trunk.as_ref(),
            top,
            head,
            layer: name.clone(),
        },
        (Some((trunk, CutTop::Loaded(top, name))), _) => MapNet::Cut {
            trunk: trunk.as_ref(),
            top,
            head,
            layer: name.clone(),
        },
        _ => {
            return Err(TlError::invalid(
                "this run's backbone has neither a pooled layer file nor a fine-tuning cut to take maps from; re-export it with scripts/export_backbones.py",
            ))
        }
    };
    let names = net.layer_names();
    if let Some(name) = layer.filter(|n| !names.iter().any(|m| m == n)) {
        return Err(TlError::invalid(format!(
            "no map at layer '{name}' for this run (its features are not a pooled layer, or its top is fine-tuned); maps are taken at: {}",
            names.join(", ")
        )));
    }
    Ok((net, 0))
}

/// Whether the run's features are the mean of the layer file's last layer (checked on the
/// image itself).
fn pooled(layers: &LayerNet, features: &LoadedModule, x: &Tensor) -> Result<bool> {
    tch::no_grad(|| {
        let acts = layers.forward(x)?;
        let Some(last) = acts.last() else {
            return Ok(false);
        };
        let gap = last.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let f = features.forward(x)?;
        if gap.size() != f.size() {
            return Ok(false);
        }
        let diff = (&gap - &f).abs().max().double_value(&[]);
        let scale = f.abs().max().double_value(&[]).max(1.0);
        Ok(diff <= 1e-4 * scale)
    })
}

/// Heat maps (true and predicted class) of the worst-classified images through `run`, for
/// its report pages; None where an image cannot be read or mapped.
pub(crate) fn loss_maps(
    run: &Run,
    losses: &[crate::eval::metrics::TopLoss],
    device: Device,
) -> Result<Vec<Option<HeatPair>>> {
    let l = load_run(run, false, device, None)?;
    Ok(losses
        .iter()
        .map(|t| heat_pair(&l, t, device).ok())
        .collect())
}

fn heat_pair(l: &Loaded, t: &crate::eval::metrics::TopLoss, device: Device) -> Result<HeatPair> {
    let img = decode_rgb(&t.path)?;
    let x = resized_tensor(&img, &l.preprocess).to_device(device);
    let (net, layer) = map_net(l, &x, None)?;
    let overlay_of = |name: &str| -> Result<(image::RgbImage, Method)> {
        let class = l
            .classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| TlError::invalid(format!("no class '{name}' in the run")))?;
        let m = net.class_map(&x, class, MethodChoice::Auto, layer)?;
        let (_, picture) = rendered(l, &img, &m)?;
        Ok((picture, m.method))
    };
    let (true_class, method) = overlay_of(&t.true_class)?;
    let (predicted, _) = overlay_of(&t.predicted)?;
    Ok(HeatPair {
        true_class,
        predicted,
        method: method.label().into(),
    })
}

/// A class map in the crop's coordinates (raw), and laid over the photo.
pub(super) fn rendered(
    l: &Loaded,
    img: &image::RgbImage,
    m: &ClassMap,
) -> Result<(Tensor, image::RgbImage)> {
    let raw = to_crop(&m.map.to_device(Device::Cpu), l.preprocess.crop as i64);
    let picture = heatmap::overlay(img, &normalised(&raw), &l.preprocess, OVERLAY_ALPHA)?;
    Ok((raw, picture))
}
