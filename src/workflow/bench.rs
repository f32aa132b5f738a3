//! `tl bench`: the backbone alone on random ready tensors, and the device's sgemm rate.
use crate::error::{Result, TlError};
use crate::eval::Report;
use crate::features::BackboneSpec;
use crate::runtime::Runtime;
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug)]
pub struct BenchSettings {
    pub backbone: String,
    pub batch_size: i64,
    /// Timed batches (after two warm-up batches).
    pub batches: usize,
    pub amp: bool,
    /// Side of the square matrices for the matmul measurement (0 skips it).
    pub matmul_size: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub backbone: String,
    pub engine: crate::features::Engine,
    pub precision: crate::features::Precision,
    pub device: String,
    pub threads: usize,
    pub batch_size: i64,
    pub batches: usize,
    pub amp: bool,
    pub images_per_second: f64,
    pub matmul_size: i64,
    pub matmul_gflops: Option<f64>,
}

impl Report for BenchReport {
    fn render_text(&self) -> String {
        let mut s = format!(
            "{}: {:.1} img/s on ready tensors (batch {}, {} threads, {}, {})\n",
            self.backbone,
            self.images_per_second,
            self.batch_size,
            self.threads,
            self.device,
            self.engine.label_with(self.precision)
        );
        if let Some(g) = self.matmul_gflops {
            s += &format!(
                "matmul {n}x{n} float32: {g:.1} GFLOP/s\n",
                n = self.matmul_size
            );
        }
        s
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn bench(rt: &Runtime, s: &BenchSettings) -> Result<BenchReport> {
    if s.batch_size < 1 || s.batches == 0 || s.matmul_size < 0 {
        return Err(TlError::invalid(
            "the batch size and the number of batches must be at least 1",
        ));
    }
    let spec = BackboneSpec::resolve(&s.backbone, &rt.backbones)?.for_engine(
        rt.engine,
        rt.precision,
        rt.device,
    )?;
    let mut module = spec.load_frozen(rt.device, rt.threads, true)?;
    let cfg = spec.preprocess();
    let side = cfg.crop as i64;
    let x = Tensor::f_randn([s.batch_size, 3, side, side], (Kind::Float, Device::Cpu))
        .map_err(|e| TlError::torch("allocating the input batch", e))?;
    let data = Vec::<f32>::try_from(&x.view([-1]))
        .map_err(|e| TlError::torch("reading the input batch", e))?;
    let amp = spec.autocast(s.amp) && rt.device.is_cuda();
    let n = s.batch_size as usize;
    // As extraction runs it: host data in, features out (on CUDA, copies included).
    let mut run = |batches: usize| -> Result<()> {
        for _ in 0..batches {
            module.run(&data, n, &cfg, rt.device, amp)?;
        }
        Ok(())
    };
    run(2)?;
    sync(rt.device);
    let t = Instant::now();
    run(s.batches)?;
    sync(rt.device);
    let secs = t.elapsed().as_secs_f64();
    let images_per_second = (s.batches as i64 * s.batch_size) as f64 / secs;
    let matmul_gflops = (s.matmul_size > 0)
        .then(|| matmul_rate(s.matmul_size, rt.device))
        .transpose()?;
    Ok(BenchReport {
        backbone: spec.name.clone(),
        engine: spec.engine,
        precision: spec.precision,
        device: crate::device::describe(rt.device),
        threads: rt.threads,
        batch_size: s.batch_size,
        batches: s.batches,
        amp,
        images_per_second,
        matmul_size: s.matmul_size,
        matmul_gflops,
    })
}

fn matmul_rate(n: i64, device: Device) -> Result<f64> {
    let alloc = || {
        Tensor::f_randn([n, n], (Kind::Float, device))
            .map_err(|e| TlError::torch("allocating the matmul operands", e))
    };
    let (a, b) = (alloc()?, alloc()?);
    let _ = a.matmul(&b);
    sync(device);
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = a.matmul(&b);
    }
    sync(device);
    Ok(2.0 * (n as f64).powi(3) * reps as f64 / t.elapsed().as_secs_f64() / 1e9)
}
