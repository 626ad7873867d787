//! `fineprune train`: train a clean model.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use fineprune::metrics::evaluate;
use fineprune::train::train_new;

use super::args::{DataArgs, TrainOpts};
use super::progress::Bars;

#[derive(Args)]
pub(super) struct TrainArgs {
    #[command(flatten)]
    pub(super) data: DataArgs,
    /// Architecture (see `fineprune archs`).
    #[arg(long)]
    pub(super) arch: String,
    /// Output model file (.safetensors), written atomically.
    #[arg(long)]
    pub(super) out: PathBuf,
    #[command(flatten)]
    pub(super) opts: TrainOpts,
    /// Print one JSON object on stdout instead of human-readable text.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn cmd_train(a: TrainArgs, device: &Device) -> Result<()> {
    let start = Instant::now();
    let ds = a.data.load()?;
    let cfg = a.opts.config();
    let mut bars = Bars::new(false);
    let trained = train_new(&a.arch, &ds, &cfg, &device.clone().autodiff(), &mut bars)?;
    trained.file.save(&a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    let report = evaluate(&trained.file, &ds.test, device)?;
    let seconds = start.elapsed().as_secs_f64();
    if a.json {
        let out = json!({
            "model": a.out,
            "arch": a.arch,
            "best_epoch": trained.best_epoch,
            "best_val_accuracy": trained.best_val_accuracy,
            "clean_accuracy": report.accuracy,
            "per_class_accuracy": report.per_class_accuracy,
            "samples": report.samples,
            "seconds": seconds,
            "history": trained.history,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "saved {} (best epoch {}, val accuracy {:.4}); test accuracy {:.4} on {} samples; {:.1}s",
            a.out.display(),
            trained.best_epoch,
            trained.best_val_accuracy,
            report.accuracy,
            report.samples,
            seconds
        );
    }
    Ok(())
}

