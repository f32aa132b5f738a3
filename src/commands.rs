//! The subcommands: each turns parsed arguments into configs, calls the library modules
//! and prints what a user wants to read.
use crate::backbone::BackboneSpec;
use crate::cache::FeatureCache;
use crate::cli::{CacheArgs, EvalArgs, EvalSplit, GlobalArgs, PredictArgs, TrainArgs};
use crate::data::{Dataset, Sample};
use crate::error::{Result, TlError};
use crate::extract::{self, ExtractOptions};
use crate::head::{Head, HeadConfig};
use crate::model::Classifier;
use crate::report::{self, ClassificationReport};
use crate::run::{self, BackboneRecord, DataRecord, ExtractRecord, Run, RunConfig};
use crate::train::{self, Split, TrainConfig};
use crate::util::{human_duration, write_atomic, write_json_atomic};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct Context {
    pub device: Device,
    pub threads: usize,
    pub decode_threads: usize,
    pub backbones: PathBuf,
    pub progress: bool,
}

impl Context {
    pub fn from_args(g: &GlobalArgs) -> Result<Context> {
        let threads = g
            .threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        tch::set_num_threads(threads as i32);
        let device = g.device.resolve()?;
        // On CPU the backbone needs the cores; one low-priority decoder per two cores keeps
        // up with it (measured in BENCHMARKS.md). On a GPU, decoding is the bottleneck.
        let default_decoders = if device == Device::Cpu {
            (threads / 2).max(1)
        } else {
            threads
        };
        Ok(Context {
            device,
            threads,
            decode_threads: g.decode_threads.unwrap_or(default_decoders).max(1),
            backbones: g.backbones.clone(),
            progress: !g.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        })
    }
}

/// The network of `--run` or `--backbone`, with its weights warning printed.
pub fn load_network(
    ctx: &Context,
    run: Option<&Path>,
    backbone: Option<&str>,
) -> Result<Classifier> {
    let classifier = Classifier::from_args(run, backbone, &ctx.backbones, ctx.device)?;
    if let Some(w) = &classifier.warning {
        eprintln!("warning: {w}");
    }
    Ok(classifier)
}

fn open_cache(args: &CacheArgs, backbone_sha: &str, spec: &BackboneSpec) -> Result<FeatureCache> {
    if args.no_cache {
        return Ok(FeatureCache::disabled());
    }
    let root = args
        .cache_dir
        .clone()
        .unwrap_or_else(crate::cache::default_root);
    crate::cache::check_root(&root)?;
    FeatureCache::open(&root, backbone_sha, &spec.preprocess())
}

#[derive(Serialize)]
struct Skipped {
    path: PathBuf,
    reason: String,
}

/// Splits extraction results into usable (features, label, path) and skipped files.
fn gather(
    samples: &[Sample],
    features: &[std::result::Result<Vec<f32>, String>],
) -> (Vec<f32>, Vec<i64>, Vec<PathBuf>, Vec<Skipped>) {
    let mut xs = Vec::new();
    let (mut ys, mut paths, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for (s, f) in samples.iter().zip(features) {
        match f {
            Ok(v) => {
                xs.extend_from_slice(v);
                ys.push(s.label as i64);
                paths.push(s.path.clone());
            }
            Err(why) => skipped.push(Skipped {
                path: s.path.clone(),
                reason: why.clone(),
            }),
        }
    }
    (xs, ys, paths, skipped)
}

fn tensor_2d(xs: &[f32], n: usize, d: usize, device: Device) -> Tensor {
    Tensor::from_slice(xs)
        .view([n as i64, d as i64])
        .to_device(device)
}

fn probabilities(head: &Head, x: &Tensor) -> Vec<Vec<f32>> {
    let p = tch::no_grad(|| head.forward(x).softmax(-1, Kind::Float)).to_device(Device::Cpu);
    (0..p.size()[0])
        .map(|i| Vec::<f32>::try_from(p.get(i)).unwrap_or_default())
        .collect()
}

fn print_skipped(skipped: &[Skipped], ignored: usize) {
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} unreadable image(s) (listed in report.json):",
            skipped.len()
        );
        for s in skipped.iter().take(10) {
            eprintln!("  {}", s.reason);
        }
        if skipped.len() > 10 {
            eprintln!("  … and {} more", skipped.len() - 10);
        }
    }
    if ignored > 0 {
        eprintln!("ignored {ignored} non-image file(s) (by extension)");
    }
}

pub fn train(ctx: &Context, args: &TrainArgs) -> Result<()> {
    let started = Instant::now();
    if let Some(out) = &args.out {
        if out.exists()
            && !args.force
            && std::fs::read_dir(out)
                .map(|mut r| r.next().is_some())
                .unwrap_or(false)
        {
            return Err(TlError::file(
                out,
                "output folder exists and is not empty (pass --force to write into it)",
            ));
        }
    }
    let spec = BackboneSpec::resolve(&args.backbone, &ctx.backbones)?;
    if let Some(w) = spec.weights_warning() {
        eprintln!("warning: {w}");
    }
    let mut dataset = Dataset::open(&args.data, None)?;
    if let Some(val_dir) = &args.val_dir {
        let val = Dataset::open(val_dir, Some(&dataset.classes))?;
        dataset.train.extend(std::mem::take(&mut dataset.val));
        dataset.val = val.all();
        dataset.ignored.extend(val.ignored);
    } else if dataset.val.is_empty() {
        dataset.split(args.val_split, args.seed)?;
    }
    let n_classes = dataset.classes.len();
    if n_classes < 2 {
        return Err(TlError::file(
            &args.data,
            format!("found {n_classes} class; a classifier needs at least 2"),
        ));
    }
    eprintln!(
        "dataset {} ({:?}): {} classes, {} train / {} val images",
        args.data.display(),
        dataset.layout,
        n_classes,
        dataset.train.len(),
        dataset.val.len()
    );

    let backbone_sha = spec.verified_features_hash()?;
    let cache = open_cache(&args.cache, &backbone_sha, &spec)?;
    let samples: Vec<Sample> = dataset.train.iter().chain(&dataset.val).cloned().collect();
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let opts = ExtractOptions {
        batch_size: args.batch_size,
        decode_threads: ctx.decode_threads,
        device: ctx.device,
        progress: ctx.progress,
        amp: args.amp,
    };
    let ex = extract::extract(&paths, &spec, &cache, &opts)?;
    let st = &ex.stats;
    eprintln!(
        "features: {} cached, {} computed{}, {} unreadable, {} in {}",
        st.cached,
        st.computed,
        if st.computed > 0 {
            format!(" ({:.1} img/s)", st.images_per_second)
        } else {
            String::new()
        },
        st.failed,
        if ex.dim > 0 {
            format!("dim {}", ex.dim)
        } else {
            "no features".into()
        },
        human_duration(st.seconds)
    );
    for c in &ex.corrupt {
        eprintln!("warning: damaged cache entry recomputed: {c}");
    }
    let n_train = dataset.train.len();
    let (tx, ty, _, mut skipped) = gather(&samples[..n_train], &ex.features[..n_train]);
    let (vx, vy, vpaths, vskipped) = gather(&samples[n_train..], &ex.features[n_train..]);
    skipped.extend(vskipped);
    print_skipped(&skipped, dataset.ignored.len());
    if ty.is_empty() {
        return Err(TlError::file(&args.data, "no readable training images"));
    }
    let d = ex.dim;
    let device = ctx.device;
    let train_x = tensor_2d(&tx, ty.len(), d, device);
    let train_y = Tensor::from_slice(&ty).to_device(device);
    let val_x = tensor_2d(&vx, vy.len(), d, device);
    let val_y = Tensor::from_slice(&vy).to_device(device);

    if let Some(path) = &args.save_features {
        let tmp = path.with_file_name(format!(
            ".{}.tmp.safetensors",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let named = [
            ("train_x", &train_x),
            ("train_y", &train_y),
            ("val_x", &val_x),
            ("val_y", &val_y),
        ];
        Tensor::write_safetensors(&named, &tmp)
            .map_err(|e| TlError::torch(format!("{}: saving features", path.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| TlError::file(path, e.to_string()))?;
    }
    let head_config = HeadConfig {
        hidden: args.hidden,
        dropout: args.dropout,
        in_dim: d as i64,
        num_classes: n_classes as i64,
        standardize: args.standardize,
    };
    let l2 = match args.l2.as_str() {
        "auto" => 1.0 / ty.len() as f64,
        v => v.parse::<f64>().ok().filter(|v| *v >= 0.0).ok_or_else(|| {
            TlError::invalid(format!("--l2 must be 'auto' or a number >= 0, got '{v}'"))
        })?,
    };
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.head_batch_size,
        lr: args.lr,
        optimizer: args.optimizer,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        label_smoothing: args.label_smoothing,
        l2,
        schedule: args.schedule,
        patience: args.patience,
        seed: args.seed,
    };
    let t_train = Instant::now();
    let val_split = (!vy.is_empty()).then_some(Split {
        x: &val_x,
        y: &val_y,
    });
    let outcome = train::train_head(
        head_config.clone(),
        &train_config,
        &Split {
            x: &train_x,
            y: &train_y,
        },
        val_split.as_ref(),
        device,
        ctx.progress,
    )?;
    let train_seconds = t_train.elapsed().as_secs_f64();

    let val_report = (!vy.is_empty()).then(|| {
        let probs = probabilities(&outcome.head, &val_x);
        let labels: Vec<usize> = vy.iter().map(|&y| y as usize).collect();
        ClassificationReport::compute(&probs, &labels, &vpaths, &dataset.classes, 10)
    });
    let (_, train_acc) = train::evaluate(
        &outcome.head,
        &Split {
            x: &train_x,
            y: &train_y,
        },
        4096,
    );

    // Write the run folder.
    let dir = run::create_dir(args.out.as_deref(), &spec.name, args.force)?;
    let config = RunConfig {
        tl_version: env!("CARGO_PKG_VERSION").into(),
        created_at: chrono::Local::now().to_rfc3339(),
        seed: args.seed,
        backbone: BackboneRecord {
            spec: args.backbone.clone(),
            name: spec.name.clone(),
            architecture: spec
                .sidecar
                .as_ref()
                .map(|s| s.architecture.clone())
                .unwrap_or_else(|| "torchscript".into()),
            sidecar: spec
                .sidecar_path
                .as_ref()
                .map(|p| std::fs::canonicalize(p).unwrap_or(p.clone())),
            features_file: std::fs::canonicalize(&spec.features_path)
                .unwrap_or(spec.features_path.clone()),
            features_sha256: backbone_sha.clone(),
            feature_dim: d as i64,
            pretrained: spec.sidecar.as_ref().map(|s| s.pretrained()),
        },
        preprocess: spec.preprocess(),
        data: DataRecord {
            root: std::fs::canonicalize(&args.data).unwrap_or(args.data.clone()),
            layout: dataset.layout,
            val_split: (args.val_dir.is_none()
                && dataset.layout == crate::data::Layout::ImageFolder)
                .then_some(args.val_split),
            val_dir: args.val_dir.clone(),
            train_images: ty.len(),
            val_images: vy.len(),
        },
        head: head_config,
        train: train_config,
        extract: ExtractRecord {
            batch_size: args.batch_size,
            threads: ctx.threads,
            device: crate::device::describe(device),
            cache_dir: cache.dir().map(Path::to_path_buf),
        },
    };
    write_json_atomic(&dir.join(run::CONFIG), &config)?;
    write_json_atomic(&dir.join(run::CLASSES), &dataset.classes)?;
    outcome.head.save(&dir.join(run::HEAD))?;
    let metrics: String = outcome
        .history
        .iter()
        .map(|m| serde_json::to_string(m).unwrap() + "\n")
        .collect();
    write_atomic(&dir.join(run::METRICS), metrics.as_bytes())?;
    let best = &outcome.history[outcome.best_epoch - 1];
    let report = serde_json::json!({
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.history.len(),
        "stopped_early": outcome.stopped_early,
        "train_accuracy": train_acc,
        "val_accuracy": best.val_accuracy,
        "val_loss": best.val_loss,
        "validation": val_report,
        "extraction": ex.stats,
        "damaged_cache_entries": ex.corrupt,
        "skipped": skipped,
        "ignored_files": dataset.ignored.iter().map(|(p, r)| Skipped { path: p.clone(), reason: r.clone() }).collect::<Vec<_>>(),
        "timing_seconds": { "extract": ex.stats.seconds, "train": train_seconds, "total": started.elapsed().as_secs_f64() },
    });
    write_json_atomic(&dir.join(run::REPORT), &report)?;

    println!("run: {}", dir.display());
    println!(
        "best epoch {}/{}{}: train accuracy {:.2}%{}",
        outcome.best_epoch,
        outcome.history.len(),
        if outcome.stopped_early {
            " (early stop)"
        } else {
            ""
        },
        100.0 * train_acc,
        match &val_report {
            Some(r) => format!(
                ", val accuracy {:.2}% (mean per-class {:.2}%) on {} images",
                100.0 * r.accuracy,
                100.0 * r.mean_class_accuracy,
                r.images
            ),
            None => String::new(),
        }
    );
    println!(
        "time: {} total ({} features, {} head)",
        human_duration(started.elapsed().as_secs_f64()),
        human_duration(ex.stats.seconds),
        human_duration(train_seconds)
    );
    Ok(())
}

pub fn eval(ctx: &Context, args: &EvalArgs) -> Result<()> {
    let run = Run::open(&args.run)?;
    let (spec, sha) = run.backbone()?;
    let mut dataset = Dataset::open(&args.data, Some(&run.classes))?;
    let samples = match args.split {
        EvalSplit::All => dataset.all(),
        EvalSplit::Val | EvalSplit::Train => {
            if dataset.val.is_empty() {
                let frac = run.config.data.val_split.ok_or_else(|| {
                    TlError::invalid("this run used no fractional split; use --split all")
                })?;
                dataset.split(frac, run.config.seed)?;
            }
            if args.split == EvalSplit::Val {
                dataset.val.clone()
            } else {
                dataset.train.clone()
            }
        }
    };
    let cache = open_cache(&args.cache, &sha, &spec)?;
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.path.clone()).collect();
    let opts = ExtractOptions {
        batch_size: args.batch_size,
        decode_threads: ctx.decode_threads,
        device: ctx.device,
        progress: ctx.progress,
        amp: false,
    };
    let ex = extract::extract(&paths, &spec, &cache, &opts)?;
    let (xs, ys, kept, skipped) = gather(&samples, &ex.features);
    if ys.is_empty() {
        return Err(TlError::file(&args.data, "no readable images to evaluate"));
    }
    let head = Head::load(run.config.head.clone(), &run.head_path(), ctx.device)?;
    let x = tensor_2d(&xs, ys.len(), ex.dim, ctx.device);
    let probs = probabilities(&head, &x);
    let labels: Vec<usize> = ys.iter().map(|&y| y as usize).collect();
    let report =
        ClassificationReport::compute(&probs, &labels, &kept, &run.classes, args.top_losses);
    if args.json {
        let out = serde_json::json!({ "run": args.run, "data": args.data, "split": format!("{:?}", args.split).to_lowercase(), "report": report, "skipped": skipped, "extraction": ex.stats });
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    } else {
        print_skipped(&skipped, 0);
        println!("{}", report.render());
    }
    Ok(())
}

#[derive(Serialize)]
struct Prediction {
    path: PathBuf,
    top: Vec<(String, f32)>,
}

pub fn predict(ctx: &Context, args: &PredictArgs) -> Result<()> {
    let (run_dir, inputs): (Option<PathBuf>, &[PathBuf]) = match (&args.run, &args.backbone) {
        (None, None) => (Some(args.paths[0].clone()), &args.paths[1..]),
        (run, _) => (run.clone(), &args.paths[..]),
    };
    if inputs.is_empty() {
        return Err(TlError::invalid(
            "no images given (usage: tl predict RUN_DIR IMAGE...)",
        ));
    }
    let classifier = load_network(ctx, run_dir.as_deref(), args.backbone.as_deref())?;
    let files = crate::data::expand_inputs(inputs)?;
    let mut predictions = Vec::new();
    let mut failures = Vec::new();
    for chunk in files.chunks(args.batch_size.max(1)) {
        let all: Vec<usize> = (0..chunk.len()).collect();
        let batch = extract::decode_batch(chunk, &all, &classifier.preprocess);
        failures.extend(
            batch
                .failures
                .iter()
                .map(|(i, e)| (chunk[*i].clone(), e.clone())),
        );
        if batch.indices.is_empty() {
            continue;
        }
        let probs = classifier.probabilities(&batch.tensor(&classifier.preprocess))?;
        for (j, &i) in batch.indices.iter().enumerate() {
            let top = report::top_k(&probs[j], args.top_k.max(1))
                .into_iter()
                .map(|c| (classifier.classes[c].clone(), probs[j][c]))
                .collect();
            predictions.push(Prediction {
                path: chunk[i].clone(),
                top,
            });
        }
    }
    if args.json {
        let out = serde_json::json!({
            "network": classifier.description,
            "predictions": predictions.iter().map(|p| serde_json::json!({
                "path": p.path,
                "class": p.top[0].0,
                "probability": p.top[0].1,
                "top": p.top.iter().map(|(c, q)| serde_json::json!({"class": c, "probability": q})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "skipped": failures.iter().map(|(p, e)| serde_json::json!({"path": p, "reason": e})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    } else {
        for p in &predictions {
            let rest: Vec<String> = p
                .top
                .iter()
                .skip(1)
                .map(|(c, q)| format!("{c} {q:.3}"))
                .collect();
            println!(
                "{}\t{} {:.3}{}",
                p.path.display(),
                p.top[0].0,
                p.top[0].1,
                if rest.is_empty() {
                    String::new()
                } else {
                    format!("\t({})", rest.join(", "))
                }
            );
        }
        for (p, e) in &failures {
            eprintln!("skipped: {e}");
            let _ = p;
        }
    }
    if predictions.is_empty() {
        return Err(TlError::invalid("no image could be read"));
    }
    Ok(())
}

pub fn doctor(ctx: &Context) -> Result<()> {
    println!("tl {}", env!("CARGO_PKG_VERSION"));
    println!(
        "libtorch: {} ({})",
        crate::LIBTORCH_VERSION,
        option_env!("TL_LIBTORCH_LIB").unwrap_or("location unknown")
    );
    let cuda = tch::Cuda::is_available();
    let count = tch::Cuda::device_count();
    println!(
        "CUDA: {}",
        if cuda {
            format!("available, {count} device(s)")
        } else {
            "not available".into()
        }
    );
    if cuda {
        for (i, name) in gpu_names().iter().enumerate().take(count as usize) {
            println!("  cuda:{i}: {name}");
        }
        println!(
            "cuDNN: {}",
            if tch::Cuda::cudnn_is_available() {
                format!("available (version {})", tch::utils::version_cudnn())
            } else {
                "not available".into()
            }
        );
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    println!(
        "libtorch_cuda loaded: {}",
        if maps.contains("libtorch_cuda.so") {
            "yes (GPU builds of libtorch can use CUDA when a driver is present)"
        } else {
            "no (CPU-only libtorch)"
        }
    );
    println!("default device: {}", crate::device::describe(ctx.device));
    println!(
        "threads: {} (libtorch intra-op {}), MKL: {}, mkldnn: {}",
        ctx.threads,
        tch::get_num_threads(),
        tch::utils::has_mkl(),
        tch::utils::has_mkldnn()
    );
    println!("backbones folder: {}", ctx.backbones.display());
    let names = crate::backbone::list(&ctx.backbones);
    if names.is_empty() {
        println!("  (none exported; run scripts/export_backbones.py mobilenet_v2 --weights FILE)");
    }
    for name in names {
        match BackboneSpec::from_sidecar(&ctx.backbones.join(format!("{name}.json"))) {
            Ok(spec) => {
                let s = spec.sidecar.as_ref().unwrap();
                println!(
                    "  {name}: {} features, {} classes, weights: {}",
                    s.feature_dim,
                    s.num_classes,
                    if s.pretrained() {
                        "pretrained"
                    } else {
                        "RANDOM (shapes/speed only)"
                    }
                );
            }
            Err(e) => println!("  {name}: {e}"),
        }
    }
    println!("feature cache: {}", crate::cache::default_root().display());
    Ok(())
}

fn gpu_names() -> Vec<String> {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Backbone-only throughput on random ready tensors, and sgemm GFLOP/s.
pub fn bench(ctx: &Context, args: &crate::cli::BenchArgs) -> Result<()> {
    let spec = BackboneSpec::resolve(&args.backbone, &ctx.backbones)?;
    let module = spec.load_features(ctx.device)?;
    let side = spec.preprocess().crop as i64;
    let x = Tensor::randn([args.batch_size, 3, side, side], (Kind::Float, Device::Cpu))
        .to_device(ctx.device);
    let sync = || {
        if let Device::Cuda(i) = ctx.device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let amp = args.amp && ctx.device.is_cuda();
    let run = |n: usize| {
        tch::no_grad(|| {
            tch::autocast(amp, || -> Result<()> {
                for _ in 0..n {
                    let _ = module.forward(&x)?;
                }
                Ok(())
            })
        })
    };
    run(2)?;
    sync();
    let t = Instant::now();
    run(args.batches)?;
    sync();
    let secs = t.elapsed().as_secs_f64();
    let img_per_s = (args.batches as i64 * args.batch_size) as f64 / secs;
    let mut gflops = None;
    if args.matmul_size > 0 {
        let n = args.matmul_size;
        let a = Tensor::randn([n, n], (Kind::Float, ctx.device));
        let b = Tensor::randn([n, n], (Kind::Float, ctx.device));
        let _ = a.matmul(&b);
        sync();
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = a.matmul(&b);
        }
        sync();
        gflops = Some(2.0 * (n as f64).powi(3) * reps as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let out = serde_json::json!({
        "backbone": spec.name, "device": crate::device::describe(ctx.device), "threads": ctx.threads,
        "batch_size": args.batch_size, "batches": args.batches, "amp": amp, "images_per_second": img_per_s, "matmul_gflops": gflops,
    });
    if args.json {
        println!("{}", serde_json::to_string(&out).unwrap());
    } else {
        println!(
            "{}: {img_per_s:.1} img/s on ready tensors (batch {}, {} threads, {})",
            spec.name,
            args.batch_size,
            ctx.threads,
            crate::device::describe(ctx.device)
        );
        if let Some(g) = gflops {
            println!(
                "matmul {n}x{n} float32: {g:.1} GFLOP/s",
                n = args.matmul_size
            );
        }
    }
    Ok(())
}
