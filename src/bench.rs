//! Throughput measurement: training and inference images per second for an architecture on
//! synthetic inputs (the numbers measure the network, not a dataset's loader).

use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::Result;
use crate::model::{Model, arch};
use crate::rng::Rng;
use crate::train::cross_entropy;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    pub arch: String,
    pub batch_size: usize,
    pub train_images_per_sec: f64,
    pub inference_images_per_sec: f64,
}

fn random_batch(shape: [usize; 3], n: usize, classes: usize, rng: &mut Rng, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let len = n * shape.iter().product::<usize>();
    let xs: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
    let ys: Vec<i64> = (0..n).map(|_| rng.below(classes) as i64).collect();
    (
        Tensor::from_data(TensorData::new(xs, [n, shape[0], shape[1], shape[2]]), device),
        Tensor::from_data(TensorData::new(ys, [n]), device),
    )
}

/// Measures one built-in architecture (10 classes, its default input): `steps` optimiser steps
/// and `steps` inference batches, after one warm-up of each.
pub fn measure(arch_name: &str, batch_size: usize, steps: usize, device: &Device) -> Result<Throughput> {
    let input = arch::default_input(arch_name).ok_or_else(|| crate::Error::invalid(format!("unknown architecture {arch_name}")))?;
    let graph = arch::build(arch_name, input, 10)?;
    measure_model(arch_name, Model::init(graph, 0, device)?, batch_size, steps, device)
}

/// Measures a given model (e.g. an imported ONNX network) the same way: Adam steps on random
/// inputs of its input shape and class count.
pub fn measure_model(name: &str, model: Model, batch_size: usize, steps: usize, device: &Device) -> Result<Throughput> {
    let input = model.graph.input_shape;
    let classes = model.num_classes();
    let train_device = device.clone().autodiff();
    let mut model = model.train();
    let mut rng = Rng::new(1);
    let mut optim = crate::backend::adam::FusedAdam::init(0.0);
    let (x, y) = random_batch(input, batch_size, classes, &mut rng, &train_device);
    let mut step = |model: Model, rng: &mut Rng| {
        let loss = cross_entropy(model.forward_train(x.clone(), rng), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optim.step(1e-3, model, grads)
    };
    model = step(model, &mut rng);
    let t = Instant::now();
    for _ in 0..steps {
        model = step(model, &mut rng);
    }
    train_device.sync().ok();
    let train_rate = (steps * batch_size) as f64 / t.elapsed().as_secs_f64();

    let eval = model.valid();
    let (x, _) = random_batch(input, batch_size, classes, &mut rng, device);
    let _ = eval.forward(x.clone()).into_data();
    let t = Instant::now();
    for _ in 0..steps {
        let _ = eval.forward(x.clone()).into_data();
    }
    let infer_rate = (steps * batch_size) as f64 / t.elapsed().as_secs_f64();
    Ok(Throughput { arch: name.into(), batch_size, train_images_per_sec: train_rate, inference_images_per_sec: infer_rate })
}

/// The benchmark the README quotes: lenet and resnet18.
pub fn throughput(device: &Device, quick: bool) -> Result<Vec<Throughput>> {
    let (lenet_steps, resnet_steps) = if quick { (3, 1) } else { (20, 3) };
    Ok(vec![measure("lenet", 64, lenet_steps, device)?, measure("resnet18", 32, resnet_steps, device)?])
}

/// The pruning sweep, timed both ways on the same model and data.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepBench {
    pub layer: String,
    pub channels: usize,
    pub samples: usize,
    /// Seconds for the fast sweep (prefix once, then the suffix or the incremental update per
    /// level), every level 0..=channels.
    pub fast_seconds: f64,
    /// Seconds for re-evaluating the full masked network at every level.
    pub naive_seconds: f64,
    pub ratio: f64,
    /// Predictions that differ between the two, over all levels (float rounding on near-ties).
    pub disagreements: usize,
}

pub fn sweep(model: &Model, split: &crate::data::Split, norm: &crate::data::Normalization, layer: Option<&str>, device: &Device) -> Result<SweepBench> {
    use crate::prune::{self, PrefixCache, sweep};
    let site = prune::find_site(model, layer)?;
    let means = prune::channel_means(model, split, norm, site.index, device, 256, &mut crate::progress::Silent)?;
    let order = prune::ranking(&means);
    // Warm-up, untimed: the first cache of a fresh process lands on pages the kernel must
    // fault in and zero (50 ms of a 160 ms fast side here), which the naive side, timed
    // second, never pays. After this both sides run on memory the allocator already holds.
    drop(PrefixCache::build(model, split, norm, site.index, device, 256));
    let t = Instant::now();
    let cache = PrefixCache::build(model, split, norm, site.index, device, 256);
    let fast = sweep::sweep_predictions(model, &cache, site.index, site.channels, &order, site.channels);
    let fast_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let naive = sweep::naive_predictions(model, split, norm, site.index, site.channels, &order, site.channels, device);
    let naive_seconds = t.elapsed().as_secs_f64();
    let disagreements = fast.iter().zip(&naive).map(|(f, n)| f.iter().zip(n).filter(|(a, b)| a != b).count()).sum();
    Ok(SweepBench { layer: site.name, channels: site.channels, samples: split.len(), fast_seconds, naive_seconds, ratio: naive_seconds / fast_seconds, disagreements })
}
