//! `fineprune trigger`: preview a trigger, or write a triggered split as NumPy arrays.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use fineprune::data::Dataset;
use fineprune::trigger::spec as trigger_spec;
use fineprune::trigger::{Trigger, Use};

use super::args::DataArgs;

#[derive(Subcommand)]
pub(super) enum TriggerCommand {
    /// Write clean and triggered samples side by side as a PNG grid.
    Preview(PreviewArgs),
    /// Write a split with the trigger applied, at its true labels, as NumPy arrays
    /// (`x` float32 in [0, 1], `y`): `--asr-data npz:FILE` and other tools measure it.
    Apply(ApplyArgs),
}

/// What both trigger subcommands read: a dataset and a trigger to put on it.
#[derive(Args)]
pub(super) struct TriggerOnData {
    #[command(flatten)]
    pub(super) data: DataArgs,
    /// Trigger spec (see the README).
    #[arg(long)]
    pub(super) trigger: String,
}

impl TriggerOnData {
    fn load(&self) -> Result<(Dataset, Trigger)> {
        Ok((self.data.load()?, trigger_spec::parse(&self.trigger)?))
    }
}

#[derive(Args)]
pub(super) struct ApplyArgs {
    #[command(flatten)]
    pub(super) input: TriggerOnData,
    /// Split to trigger: train, val or test.
    #[arg(long, default_value = "test")]
    pub(super) split: String,
    /// Write the arrays here (.npz), atomically.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Seed of random trigger positions.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
}

pub(super) fn cmd_apply(a: ApplyArgs) -> Result<()> {
    let (ds, trigger) = a.input.load()?;
    let split = ds.split(&a.split)?;
    let triggered = trigger.apply_split(split, None, ds.shape, Use::Test, a.seed)?;
    fineprune::data::npz::write(&a.out, &triggered, ds.shape)?;
    println!("wrote {} ({} {} samples with trigger {}, true labels)", a.out.display(), triggered.len(), a.split, trigger.describe());
    Ok(())
}

#[derive(Args)]
pub(super) struct PreviewArgs {
    #[command(flatten)]
    pub(super) input: TriggerOnData,
    /// Write the PNG grid here.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Number of samples shown.
    #[arg(long, default_value_t = 8)]
    pub(super) count: usize,
}

pub(super) fn cmd_preview(a: PreviewArgs) -> Result<()> {
    let (ds, trigger) = a.input.load()?;
    let n = a.count.clamp(1, 64).min(ds.test.len());
    let idx: Vec<usize> = (0..n).collect();
    let clean = ds.test.subset(&idx);
    let triggered = trigger.apply_split(&ds.test, Some(&idx), ds.shape, Use::Test, 1)?;
    let scale = (128 / ds.shape[1].max(ds.shape[2])).max(1);
    fineprune::report::grid::pairs_png(&clean, &triggered, ds.shape, n, scale, &a.out)?;
    println!("wrote {} ({n} clean | triggered pairs, trigger {})", a.out.display(), trigger.describe());
    Ok(())
}

