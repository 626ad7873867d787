use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::*;

#[derive(Subcommand)]
pub(super) enum TriggerCommand {
    /// Write clean and triggered samples side by side as a PNG grid.
    Preview(PreviewArgs),
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

