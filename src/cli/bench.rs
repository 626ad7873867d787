//! `fineprune bench`: training and inference throughput on this machine.

use std::path::PathBuf;

use burn::tensor::Device;
use anyhow::{Context, Result};
use clap::Args;

use fineprune::data::{DataSpec, Dataset, LoadOptions};
use fineprune::model::arch;

use super::args::{SplitArgs, ModelArgs, load_model_and_data};

#[derive(Args)]
pub(super) struct BenchArgs {
    /// Fewer iterations (for a smoke run).
    #[arg(long)]
    pub(super) quick: bool,
    /// Measure these architectures instead of the default lenet and resnet18: built-in names or
    /// model files (.safetensors, .onnx), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(super) arch: Vec<String>,
    /// Batch size of the throughput measurement.
    #[arg(long, default_value_t = 64)]
    pub(super) batch_size: usize,
    /// Optimiser steps (and inference batches) per architecture (default 5, 1 with --quick).
    #[arg(long)]
    pub(super) steps: Option<usize>,
    /// Print JSON lines instead of tables: one object per architecture, then the sweep's.
    #[arg(long)]
    pub(super) json: bool,
    /// Time the pruning sweep on this model (default: a fresh signnet on the built-in set).
    #[arg(long, requires = "data")]
    pub(super) model: Option<PathBuf>,
    /// Data for the sweep benchmark, KIND:PATH.
    #[arg(long)]
    pub(super) data: Option<String>,
    /// Samples of the validation split used by the sweep benchmark.
    #[arg(long, default_value_t = 1000)]
    pub(super) samples: usize,
    /// Skip the throughput table.
    #[arg(long)]
    pub(super) sweep_only: bool,
}

/// A built-in architecture by name, or a model file by path.
fn measure_named(name: &str, batch: usize, steps: usize, device: &burn::tensor::Device) -> Result<fineprune::bench::Throughput> {
    let path = std::path::Path::new(name);
    if arch::default_input(name).is_none() && path.is_file() {
        let file = fineprune::model::store::load(path, &Default::default(), device).with_context(|| format!("loading {name}"))?;
        return Ok(fineprune::bench::measure_model(name, file.model, batch, steps, device)?);
    }
    Ok(fineprune::bench::measure(name, batch, steps, device)?)
}

pub(super) fn fineprune_bench(a: BenchArgs, device: &Device) -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if !a.sweep_only {
        let results = if a.arch.is_empty() {
            fineprune::bench::throughput(device, a.quick)?
        } else {
            let steps = a.steps.unwrap_or(if a.quick { 1 } else { 5 });
            a.arch.iter().map(|name| measure_named(name, a.batch_size, steps, device)).collect::<Result<Vec<_>>>()?
        };
        if a.json {
            for r in &results {
                println!("{}", serde_json::to_string(r)?);
            }
            if a.sweep_only || a.model.is_none() {
                return Ok(());
            }
        }
        println!("throughput on {cores} cores (Flex CPU backend)");
        println!("{:<12} {:>16} {:>16}", "arch", "train img/s", "inference img/s");
        for r in results {
            println!("{:<12} {:>16.1} {:>16.1}", r.arch, r.train_images_per_sec, r.inference_images_per_sec);
        }
    }
    let (model, split, norm, what) = match (&a.model, &a.data) {
        (Some(m), Some(d)) => {
            let args = ModelArgs { model: Some(m.clone()), weights: None, arch: None, mean: vec![], std: vec![], allow_non_finite: false, max_model_bytes: None, max_tensor_elements: None };
            let (file, ds) = load_model_and_data(&args, d, &SplitArgs::default(), device)?;
            let n = a.samples.min(ds.val.len());
            (file.model, ds.val.subset(&(0..n).collect::<Vec<_>>()), ds.normalization, format!("{} on {d}", m.display()))
        }
        _ => {
            let spec = DataSpec { kind: fineprune::data::Kind::Synthetic, path: "builtin".into() };
            let ds = Dataset::load(&spec, &LoadOptions::default())?;
            let g = arch::build("signnet", ds.shape, ds.classes.len())?;
            let n = a.samples.min(ds.train.len());
            (fineprune::model::Model::init(g, 0, device)?, ds.train.subset(&(0..n).collect::<Vec<_>>()), ds.normalization, "a fresh signnet on the built-in set".to_string())
        }
    };
    let s = fineprune::bench::sweep(&model, &split, &norm, None, device)?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("pruning sweep of {} ({} channels, every level 0..={}) over {} samples, {what}:", s.layer, s.channels, s.channels, s.samples);
    println!("  fast (prefix once + suffix/incremental): {:8.2}s", s.fast_seconds);
    println!("  naive (full network per level):          {:8.2}s", s.naive_seconds);
    println!("  ratio: {:.1}x; predictions that differ: {} of {}", s.ratio, s.disagreements, (s.channels + 1) * s.samples);
    Ok(())
}

