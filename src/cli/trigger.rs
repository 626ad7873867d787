//! `fineprune trigger`: preview a trigger, or write a triggered split as NumPy arrays.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use fineprune::data::LoadOptions;
use fineprune::trigger::Use;
use clap::Subcommand;
use fineprune::trigger::spec as trigger_spec;

use super::args::{parse_size, load_data};

#[derive(Subcommand)]
pub(super) enum TriggerCommand {
    /// Write clean and triggered samples side by side as a PNG grid.
    Preview(PreviewArgs),
    /// Write a split with the trigger applied, at its true labels, as NumPy arrays
    /// (`x` float32 in [0, 1], `y`): `--asr-data npz:FILE` and other tools measure it.
    Apply(ApplyArgs),
}

#[derive(Args)]
pub(super) struct ApplyArgs {
    /// Dataset as KIND:PATH.
    #[arg(long)]
    pub(super) data: String,
    /// Trigger spec (see the README).
    #[arg(long)]
    pub(super) trigger: String,
    /// Split to trigger: train, val or test.
    #[arg(long, default_value = "test")]
    pub(super) split: String,
    /// Write the arrays here (.npz), atomically.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Resize samples to HxW first (the model's input size).
    #[arg(long, value_parser = parse_size)]
    pub(super) resize: Option<(usize, usize)>,
    /// Seed of random trigger positions.
    #[arg(long, default_value_t = 1)]
    pub(super) seed: u64,
}

pub(super) fn cmd_apply(a: ApplyArgs) -> Result<()> {
    let ds = load_data(&a.data, &LoadOptions { size: a.resize, ..LoadOptions::default() })?;
    let trigger = trigger_spec::parse(&a.trigger)?;
    let split = ds.split(&a.split)?;
    let triggered = trigger.apply_split(split, None, ds.shape, Use::Test, a.seed)?;
    fineprune::data::npz::write(&a.out, &triggered, ds.shape)?;
    println!("wrote {} ({} {} samples with trigger {}, true labels)", a.out.display(), triggered.len(), a.split, trigger.describe());
    Ok(())
}

#[derive(Args)]
pub(super) struct PreviewArgs {
    /// Dataset as KIND:PATH.
    #[arg(long)]
    pub(super) data: String,
    /// Trigger spec (see the README).
    #[arg(long)]
    pub(super) trigger: String,
    /// Write the PNG grid here.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Number of samples shown.
    #[arg(long, default_value_t = 8)]
    pub(super) count: usize,
    /// Resize samples to HxW first.
    #[arg(long, value_parser = parse_size)]
    pub(super) resize: Option<(usize, usize)>,
}

pub(super) fn cmd_preview(a: PreviewArgs) -> Result<()> {
    let ds = load_data(&a.data, &LoadOptions { size: a.resize, ..LoadOptions::default() })?;
    let trigger = trigger_spec::parse(&a.trigger)?;
    let n = a.count.clamp(1, 64).min(ds.test.len());
    let idx: Vec<usize> = (0..n).collect();
    let clean = ds.test.subset(&idx);
    let triggered = trigger.apply_split(&ds.test, Some(&idx), ds.shape, Use::Test, 1)?;
    let scale = (128 / ds.shape[1].max(ds.shape[2])).max(1);
    fineprune::report::grid::pairs_png(&clean, &triggered, ds.shape, n, scale, &a.out)?;
    println!("wrote {} ({n} clean | triggered pairs, trigger {})", a.out.display(), trigger.describe());
    Ok(())
}

