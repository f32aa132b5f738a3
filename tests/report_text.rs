//! Every command's text report (and the notes printed beside it on stderr), compared whole
//! against a fixed expected text
//! (tests/expected/report_text/NAME.txt), so that a change to any line of what users read
//! shows up in review. The reports are built from fixed values: no backbone, no timing.
//! After an intended change: `TL_BLESS=1 cargo test --release --test report_text`, then
//! read the diff of the expected files.
use std::collections::BTreeMap;
use std::path::PathBuf;
use tl::audit::neighbors::Method;
use tl::error::SkipReason;
use tl::eval::calibration::{Calibration, ReliabilityBin};
use tl::eval::metrics::{ClassMetrics, ConfusedPair, TopLoss};
use tl::eval::{ClassCount, ClassProb, ClassificationReport, Report};
use tl::features::{Engine, ExtractStats, Precision};
use tl::inspect::attack::AttackOutcome;
use tl::inspect::dream::{DreamConfig, Objective, Parametrization};
use tl::util::FilePath;
use tl::workflow::SkippedFile;

fn p(s: &str) -> FilePath {
    FilePath(PathBuf::from(s))
}

fn expected_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/expected/report_text")
}

/// The whole text, or a failure that shows both texts line by line.
fn check(name: &str, report: &dyn Fn() -> String) {
    let actual = report();
    let path = expected_dir().join(format!("{name}.txt"));
    if std::env::var("TL_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(expected_dir()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TL_BLESS=1 writes it)", path.display()));
    if actual != expected {
        let mut diff = String::new();
        let (a, e): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
        for i in 0..a.len().max(e.len()) {
            let (x, y) = (a.get(i).copied(), e.get(i).copied());
            if x != y {
                diff += &format!("line {}:\n  expected: {y:?}\n  actual:   {x:?}\n", i + 1);
            }
        }
        panic!("{name}: the text differs from {}\n{diff}", path.display());
    }
}

/// stdout's text, then the notes the binary prints on stderr.
fn text<R: Report>(r: &R) -> String {
    let mut out = r.render_text();
    let notes = r.notes();
    if !notes.is_empty() {
        out += "--- stderr ---\n";
        for n in notes {
            out += &n;
            out += "\n";
        }
    }
    out
}

fn stats(computed: usize, cached: usize, failed: usize) -> ExtractStats {
    ExtractStats {
        engine: Engine::OpenVino,
        precision: Precision::Bf16,
        images: computed + cached + failed,
        cached,
        computed,
        failed,
        corrupt_cache_entries: 0,
        seconds: 12.5,
        compute_seconds: 10.0,
        workers: 2,
        images_per_second: computed as f64 / 10.0,
    }
}

fn classification() -> ClassificationReport {
    ClassificationReport {
        images: 200,
        accuracy: 0.975,
        mean_class_accuracy: 0.9749,
        loss: 0.0712,
        per_class: vec![
            ClassMetrics {
                class: "cat".into(),
                precision: 0.98,
                recall: 0.97,
                f1: 0.9750,
                support: 100,
            },
            ClassMetrics {
                class: "dog".into(),
                precision: 0.9703,
                recall: 0.98,
                f1: 0.9751,
                support: 100,
            },
        ],
        confusion: vec![vec![97, 3], vec![2, 98]],
        confused_pairs: vec![ConfusedPair {
            true_class: "cat".into(),
            predicted: "dog".into(),
            count: 3,
        }],
        top_losses: vec![TopLoss {
            path: p("data/cat/cat.17.jpg"),
            true_class: "cat".into(),
            predicted: "dog".into(),
            prob_true: 0.0412,
            prob_predicted: 0.9588,
            loss: 3.189,
        }],
    }
}

fn calibration(ece: f64, nll: f64) -> Calibration {
    Calibration {
        ece,
        nll,
        brier: 0.04,
        bins: vec![ReliabilityBin {
            lo: 0.9,
            hi: 1.0,
            images: 180,
            confidence: 0.985,
            accuracy: 0.98,
        }],
    }
}

fn skipped() -> Vec<SkippedFile> {
    vec![SkippedFile {
        path: p("data/dog/broken.jpg"),
        reason: SkipReason::TruncatedJpeg,
    }]
}

fn top(classes: &[(&str, f64)]) -> Vec<ClassProb> {
    classes
        .iter()
        .enumerate()
        .map(|(index, (class, probability))| ClassProb {
            class: class.to_string(),
            index,
            probability: *probability,
        })
        .collect()
}

#[test]
fn train() {
    use tl::workflow::train::{Timing, TrainReport, UnknownSummary};
    check("train", &|| {
        text(&TrainReport {
            run: p("runs/cats"),
            best_epoch: 14,
            epochs_run: 20,
            stopped_early: false,
            train_accuracy: 0.9931,
            val_accuracy: Some(0.975),
            val_loss: Some(0.0712),
            validation: Some(classification()),
            extraction: stats(1000, 300, 1),
            skipped: skipped(),
            warnings: vec!["class 'dog' has 3x the images of 'cat'".into()],
            timing_seconds: Timing {
                extract: 12.5,
                train: 0.6,
                finetune: 0.0,
                calibrate: 0.2,
                total: 13.6,
            },
            views: 1,
            classes: vec![
                ClassCount {
                    class: "cat".into(),
                    train: Some(500),
                    val: Some(100),
                },
                ClassCount {
                    class: "dog".into(),
                    train: Some(499),
                    val: Some(100),
                },
            ],
            calibration: Some(tl::workflow::train::CalibrationSummary {
                temperature: 1.31,
                images: 200,
                before: calibration(0.0095, 0.0524),
                after: calibration(0.0076, 0.05),
            }),
            unknown: Some(UnknownSummary {
                method: "knn-cosine".into(),
                k: 10,
                accept: 0.95,
                threshold: 0.4123,
                references: 999,
                calibrated_on: "validation".into(),
                calibration_images: 200,
                calibration_rejected: 0.05,
                stored_bytes: 1_279_488,
                histogram_max: 0.9,
                histogram: vec![1, 2, 3],
            }),
            ..TrainReport::default()
        })
    });
}

/// A trial with its fold scores (losses 0.1 + the trial's index/100).
fn scored(
    i: usize,
    trial: tl::workflow::tune::search::Trial,
    scores: &[f64],
) -> tl::workflow::tune::search::Scored {
    tl::workflow::tune::search::Scored {
        trial,
        scores: scores.to_vec(),
        losses: vec![0.1 + i as f64 / 100.0; scores.len()],
        seconds: 0.5 * (i + 1) as f64,
    }
}

#[test]
fn tune() {
    use tl::workflow::train::tuning::Tuning;
    use tl::workflow::train::TrainReport;
    use tl::workflow::tune::search::Trial;
    let base = Trial::default_for(false);
    check("tune", &|| {
        text(&TrainReport {
            run: p("runs/tuned"),
            best_epoch: 12,
            epochs_run: 22,
            stopped_early: true,
            train_accuracy: 0.99,
            val_accuracy: Some(0.98),
            validation: Some(classification()),
            views: 4,
            tuning: Some(Tuning {
                folds: 3,
                grouped_images: 2,
                trials: vec![
                    scored(0, base.clone(), &[0.9, 0.92, 0.91]),
                    scored(
                        1,
                        Trial {
                            hidden: 512,
                            ..base.clone()
                        },
                        &[0.95],
                    ),
                    scored(
                        2,
                        Trial {
                            lr: 0.003,
                            ..base.clone()
                        },
                        &[0.93, 0.92, 0.94],
                    ),
                    scored(
                        3,
                        Trial {
                            views: 4,
                            lr: 0.003,
                            ..base.clone()
                        },
                        &[0.94, 0.92, 0.95],
                    ),
                ],
                chosen: 2,
                budget_seconds: 600.0,
                search_seconds: 42.0,
                notes: vec![
                    "--finetune 1 not tried: estimated 700 s, 400 s of the budget left".into(),
                ],
            }),
            ..TrainReport::default()
        })
    });
}

#[test]
fn cv() {
    use tl::workflow::tune::{CvReport, FoldAssignment};
    check("cv", &|| {
        text(&CvReport {
            data: p("data/pets"),
            backbone: "mobilenet_v2".into(),
            folds: 3,
            images: 6,
            grouped_images: 2,
            fold_scores: vec![0.9, 0.95, 0.85],
            fold_losses: vec![0.3, 0.2, 0.4],
            mean: 0.9,
            std: 0.05,
            se: 0.0289,
            loss: 0.3,
            seconds: 1.25,
            assignments: vec![FoldAssignment {
                path: p("data/pets/a.jpg"),
                fold: 1,
            }],
            warnings: vec!["3 file(s) skipped".into()],
        })
    });
}

#[test]
fn eval() {
    use tl::workflow::evaluate::{
        EvalCalibration, EvalImages, EvalReport, EvalUnknown, OtherImages, SplitCheck, Tta,
    };
    check("eval", &|| {
        text(&EvalReport {
            run: p("runs/cats"),
            data: p("data"),
            split: EvalImages::Val,
            tta: Tta::Flip,
            report: classification(),
            skipped: skipped(),
            extraction: stats(0, 200, 1),
            split_check: Some(SplitCheck {
                found: 199,
                missing: vec![p("data/cat/gone.jpg")],
                new: vec![],
            }),
            calibration: Some(EvalCalibration {
                temperature: 1.31,
                before: calibration(0.0095, 0.0524),
                after: calibration(0.0076, 0.05),
            }),
            unknown: Some(EvalUnknown {
                threshold: 0.4123,
                rejected: 10,
                rejected_share: 0.05,
                accepted_accuracy: Some(0.9842),
                scores: vec![0.1, 0.2],
                other: Some(OtherImages {
                    dir: p("ood"),
                    images: 151,
                    rejected: 150,
                    rejected_share: 150.0 / 151.0,
                    auroc: Some(0.9983),
                    scores: vec![0.9],
                    skipped: vec![],
                }),
            }),
            warnings: vec![],
        })
    });
}

#[test]
fn predict() {
    use tl::inspect::classifier::UnknownRule;
    use tl::workflow::predict::{PredictReport, Prediction};
    check("predict", &|| {
        text(&PredictReport {
            network: "run runs/cats (mobilenet_v2)".into(),
            unknown: Some(UnknownRule {
                threshold: 0.4123,
                accept: 0.95,
            }),
            predictions: vec![
                Prediction {
                    path: p("photos/tabby.jpg"),
                    class: "cat".into(),
                    probability: 0.9912,
                    top: top(&[("cat", 0.9912), ("dog", 0.0088)]),
                    unknown: Some(false),
                    unknown_score: Some(0.21),
                    unknown_threshold: Some(0.4123),
                },
                Prediction {
                    path: p("photos/car.jpg"),
                    class: "dog".into(),
                    probability: 0.61,
                    top: top(&[("dog", 0.61), ("cat", 0.39)]),
                    unknown: Some(true),
                    unknown_score: Some(0.77),
                    unknown_threshold: Some(0.4123),
                },
            ],
            skipped: skipped(),
            warnings: vec![],
        })
    });
}

#[test]
fn extract() {
    use tl::data::shard::{Shard, ShardSource};
    use tl::workflow::extract::ExtractReport;
    check("extract", &|| {
        text(&ExtractReport {
            data: p("data"),
            backbone: "mobilenet_v2".into(),
            shard: Shard { index: 2, count: 4 },
            shard_source: ShardSource::Slurm,
            dataset_images: 1300,
            shard_images: 329,
            dry_run: false,
            files: None,
            extraction: Some(stats(169, 160, 0)),
            cache_dir: Some(p("/shared/tl-cache/features/abc-def")),
            dim: 1280,
            skipped: vec![],
            damaged_cache_entries: vec![],
            warnings: vec![],
        })
    });
}

#[test]
fn cache_stats_and_gc() {
    use tl::features::cache_admin::NamespaceStats;
    use tl::workflow::cache::{CacheReport, Compacted, GcReport, Removed};
    check("cache_stats", &|| {
        text(&CacheReport {
            root: p("/home/u/.cache/tl"),
            verified: true,
            namespaces: vec![NamespaceStats {
                dir: PathBuf::from("/home/u/.cache/tl/features/abc-def"),
                info: None,
                dim: Some(1280),
                segments: 3,
                entries: 1300,
                duplicates: 0,
                loose_entries: 0,
                bytes: 6_700_000,
                stale_temp_files: 0,
                last_used: Some("2026-11-29 16:00".into()),
                problems: vec![],
            }],
            entries: 1300,
            bytes: 6_700_000,
            problems: 0,
            duplicates: 0,
            stale_temp_files: 0,
        })
    });
    check("cache_gc", &|| {
        text(&GcReport {
            root: p("/home/u/.cache/tl"),
            dry_run: true,
            removed: vec![Removed {
                dir: p("/home/u/.cache/tl/features/old-one"),
                reason: "not used since 2026-01-01 10:00".into(),
                bytes: 5_000_000,
                entries: 900,
            }],
            compacted: vec![Compacted {
                dir: p("/home/u/.cache/tl/features/abc-def"),
                files_merged: 12,
                entries: 1300,
            }],
            stale_temp_files: 1,
            damaged_segments: 0,
            freed_bytes: 5_000_000,
            kept: vec![],
            abandoned_trash: 0,
        })
    });
}

#[test]
fn audit() {
    use tl::workflow::audit::{
        AuditReport, AuditTiming, AuditUsed, Imbalance, LabelIssue, NearDuplicate, Outlier,
        Unreadable,
    };
    check("audit", &|| {
        text(&AuditReport {
            data: p("data"),
            backbone: "mobilenet_v2".into(),
            images: 1300,
            classes: vec!["cat".into(), "dog".into()],
            class_counts: BTreeMap::from([("cat".into(), 650), ("dog".into(), 649)]),
            unreadable: vec![Unreadable {
                path: p("dog/broken.jpg"),
                reason: "truncated JPEG (no end-of-image marker)".into(),
            }],
            exact_duplicates: vec![vec![p("cat/1.jpg"), p("cat/1 copy.jpg")]],
            exact_duplicate_leaks: vec![],
            near_duplicates: vec![NearDuplicate {
                a: p("cat/2.jpg"),
                b: p("cat/2-small.jpg"),
                similarity: 0.981,
                leak: true,
            }],
            label_issues: vec![LabelIssue {
                path: p("cat/7.jpg"),
                given: "cat".into(),
                suggested: "dog".into(),
                score: 0.993,
            }],
            outliers: vec![Outlier {
                path: p("dog/screenshot.png"),
                score: 0.71,
            }],
            confused_pairs: vec![ConfusedPair {
                true_class: "cat".into(),
                predicted: "dog".into(),
                count: 4,
            }],
            imbalance: Some(Imbalance {
                largest: "cat".into(),
                smallest: "dog".into(),
                ratio: 1.0015,
                imbalanced: false,
            }),
            out_of_sample_accuracy: Some(0.9769),
            used: AuditUsed {
                near_duplicate: 0.93,
                folds: 5,
                neighbors: Method::Exact,
                outlier_neighbors: 5,
                outlier_cutoff: 0.42,
                split: "from run runs/cats".into(),
            },
            review: None,
            html: Some(p("audit.html")),
            extraction: stats(0, 1299, 1),
            timing_seconds: AuditTiming {
                extract: 0.8,
                neighbors: 0.3,
                labels: 1.9,
                analyse: 0.1,
                total: 3.1,
            },
            warnings: vec![],
            notes: vec![],
            show: 10,
        })
    });
}

#[test]
fn backbones_list_add_remove_verify() {
    use tl::workflow::backbones::{Added, BackboneEntry, BackboneList, Damaged, Removed, Verified};
    let entry = BackboneEntry {
        name: "mobilenet_v2".into(),
        architecture: "mobilenet_v2".into(),
        feature_dim: 1280,
        weights: "real".into(),
        weights_source: "file mobilenet_v2-imagenet.safetensors".into(),
        files: 6,
        bytes: 27_000_000,
        onnx: true,
        sidecar: p("/home/u/.local/share/tl/backbones/mobilenet_v2.json"),
    };
    check("backbones_list", &|| {
        text(&BackboneList {
            search: vec![p("./backbones"), p("/home/u/.local/share/tl/backbones")],
            store: p("/home/u/.local/share/tl/backbones"),
            backbones: vec![entry.clone()],
            unreadable: vec![(p("./backbones/bad.json"), "invalid JSON".into())],
        })
    });
    check("backbones_add", &|| {
        text(&Added {
            backbone: entry.clone(),
            exported: true,
        })
    });
    check("backbones_remove", &|| {
        text(&Removed {
            name: "vgg16".into(),
            files: vec![p("backbones/vgg16.json"), p("backbones/vgg16.pt")],
            bytes: 553_000_000,
        })
    });
    check("backbones_verify", &|| {
        text(&Verified {
            backbones: 3,
            files: 14,
            damaged: vec![Damaged {
                backbone: "resnet50".into(),
                file: p("backbones/resnet50.pt"),
                problem: "sha256 differs from the sidecar's".into(),
            }],
        })
    });
}

#[test]
fn attack() {
    use tl::workflow::attack::{AttackReport, EpsSummary};
    let outcome = AttackOutcome {
        input: p("dog.jpg"),
        output: Some(p("dog-adv.png")),
        eps: 4.0 / 255.0,
        success: true,
        skipped: None,
        original_class: "dog".into(),
        adversarial_class: "cat".into(),
        original_top5: top(&[("dog", 0.97), ("cat", 0.03)]),
        adversarial_top5: top(&[("cat", 0.91), ("dog", 0.09)]),
        prob_before: 0.03,
        prob_after: 0.91,
        linf: 4.0 / 255.0,
        l2: 1.52,
        psnr_db: 41.7,
        steps: 9,
        seconds: 0.14,
    };
    check("attack", &|| {
        text(&AttackReport {
            network: "run runs/cats (mobilenet_v2)".into(),
            outcomes: vec![outcome.clone()],
            summary: vec![EpsSummary {
                eps: 4.0 / 255.0,
                eps_label: "4/255".into(),
                attacked: 1,
                succeeded: 1,
                success_rate: 1.0,
                median_steps: Some(9),
                mean_l2: 1.52,
                median_seconds: Some(0.14),
            }],
            warnings: vec![],
            many: false,
        })
    });
}

#[test]
fn dream_and_layers() {
    use tl::workflow::dream::{DreamImage, DreamReport, LayerInfo, LayersReport};
    let config = DreamConfig {
        steps: 256,
        lr: 0.05,
        tv: 0.0005,
        l2: 0.0,
        size: Some(224),
        seed: 0,
        init: None,
        transforms: true,
        polish: 32,
        save_every: None,
        param: Parametrization::Fourier,
        objective: Objective::Both,
        batch: 1,
        diversity: 0.0,
    };
    let top5 = top(&[("cat", 0.9999), ("dog", 0.0001)]);
    check("dream", &|| {
        text(&DreamReport {
            network: "run runs/cats (mobilenet_v2)".into(),
            class: "cat".into(),
            index: 0,
            probability: Some(0.9999),
            top5: top5.clone(),
            total_variation: 0.0412,
            steps: 256,
            seconds: 10.4,
            output: p("cat.png"),
            strip: None,
            config: config.clone(),
            warnings: vec![],
            channel: None,
            similarity: None,
            images: vec![DreamImage {
                output: p("cat.png"),
                probability: Some(0.9999),
                top5: top5.clone(),
                channel: None,
                total_variation: 0.0412,
            }],
        })
    });
    check("dream_layers", &|| {
        text(&LayersReport {
            network: "backbone mobilenet_v2".into(),
            layers: vec![
                LayerInfo {
                    name: "features.4".into(),
                    channels: 32,
                    size: vec![28, 28],
                },
                LayerInfo {
                    name: "features.18".into(),
                    channels: 1280,
                    size: vec![7, 7],
                },
            ],
        })
    });
}

#[test]
fn export_report_compare_bench() {
    use tl::export::onnx::OnnxCheck;
    use tl::model_file::ModelFormat;
    use tl::workflow::bench::BenchReport;
    use tl::workflow::compare::{CompareReport, CompareRow};
    use tl::workflow::export::ExportReport;
    use tl::workflow::report::HtmlWritten;
    check("export", &|| {
        text(&ExportReport {
            model: p("cats.onnx"),
            sidecar: p("cats.onnx.json"),
            format: ModelFormat::Onnx,
            classes: 2,
            bytes: 9_100_000,
            sha256: "0123456789abcdef".repeat(4),
            onnx: Some(OnnxCheck {
                torch: "2.13.0".into(),
                opset: Some(18),
                onnxruntime: Some("1.32.0".into()),
                max_abs_diff: Some(6.3e-7),
            }),
            unknown_threshold: None,
        })
    });
    check("report_html", &|| {
        text(&HtmlWritten {
            path: p("runs/cats/report.html"),
            bytes: 412_000,
            included_images: 2,
        })
    });
    check("compare", &|| {
        text(&CompareReport {
            data: p("data"),
            seed: 0,
            same_split: true,
            rows: vec![CompareRow {
                backbone: "mobilenet_v2".into(),
                run: p("compare/mobilenet_v2"),
                val_accuracy: Some(0.9785),
                mean_class_accuracy: Some(0.9784),
                extraction_images_per_second: Some(86.7),
                extract_seconds: 15.0,
                head_seconds: 0.6,
                backbone_bytes: 14_000_000,
                feature_dim: 1280,
            }],
            page: p("compare/compare.html"),
            run_notes: vec!["vgg16: warning: random weights: shapes and speed only".into()],
        })
    });
    check("bench", &|| {
        text(&BenchReport {
            backbone: "resnet50".into(),
            engine: Engine::Torch,
            precision: Precision::Fp32,
            device: "cpu".into(),
            threads: 2,
            batch_size: 32,
            batches: 5,
            amp: false,
            images_per_second: 12.5,
            matmul_size: 2048,
            matmul_gflops: Some(131.0),
        })
    });
}

#[test]
fn doctor() {
    use tl::error::Unavailable;
    use tl::workflow::doctor::{BackboneStatus, DoctorReport};
    check("doctor", &|| {
        text(&DoctorReport {
            tl_version: "0.1.0".into(),
            libtorch_version: "2.13.0".into(),
            libtorch_dir: "/work/.venv/lib/python3.11/site-packages/torch/lib".into(),
            cuda_devices: vec![],
            cudnn: None,
            libtorch_cuda_loaded: false,
            onnxruntime: Err(Unavailable("no ONNX Runtime library known".into())),
            openvino: Ok("2026.4.1 (/work/.venv/lib/python3.11/site-packages/openvino/libs/libopenvino_c.so.2641)".into()),
            native_bf16: true,
            jpeg_decoder: "libjpeg-turbo from /work/.venv/lib/python3.11/site-packages/pillow.libs/libjpeg-6dc8d115.so.62.4.0 (decode draft)".into(),
            engine: "torch (ONNX Runtime not available)".into(),
            default_device: "cpu".into(),
            threads: 2,
            torch_threads: 2,
            mkl: true,
            mkldnn: true,
            backbones_search: vec![p("./backbones")],
            backbones_store: p("/home/u/.local/share/tl/backbones"),
            weights_dir: p("/home/u/.local/share/tl/weights"),
            backbones: vec![BackboneStatus {
                name: "mobilenet_v2".into(),
                status: "ready".into(),
            }],
            cache_dir: p("/home/u/.cache/tl"),
        })
    });
}

#[test]
fn explain() {
    use tl::inspect::explain::Method;
    use tl::inspect::heatmap::CropBox;
    use tl::workflow::explain::{ExplainReport, ExplainedClass, ExplainedImage};
    check("explain", &|| {
        text(&ExplainReport {
            network: "run runs/cats (mobilenet_v2)".into(),
            images: vec![ExplainedImage {
                path: p("photos/tabby.jpg"),
                width: 500,
                height: 375,
                crop: CropBox {
                    x: 93.5,
                    y: 11.0,
                    width: 327.1,
                    height: 328.1,
                },
                top: top(&[("cat", 0.9912), ("dog", 0.0088)]),
                classes: vec![ExplainedClass {
                    class: "cat".into(),
                    index: 0,
                    probability: 0.9912,
                    method: Method::Cam,
                    layer: "features.18".into(),
                    engine: Engine::Onnx,
                    overlay: p("explained/tabby.cat.png"),
                    map: p("explained/tabby.cat.safetensors"),
                }],
                grid: None,
                channels: vec![],
            }],
            skipped: skipped(),
            warnings: vec![],
        })
    });
}
