//! `fineprune convert`: between .onnx and .safetensors (and from a PyTorch state dict).

use std::path::PathBuf;

use burn::tensor::Device;
use anyhow::{Context, Result};
use clap::Args;

use super::args::ModelArgs;

#[derive(Args)]
pub(super) struct ConvertArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Output: .onnx (opset 13, weights embedded) or .safetensors; written atomically.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Keep pruned channels as zeroed channels instead of removing them.
    #[arg(long)]
    pub(super) keep_shape: bool,
}

pub(super) fn cmd_convert(a: ConvertArgs, device: &Device) -> Result<()> {
    let mut file = a.model.load(device).context("loading the model")?;
    let mut removed = 0;
    if !a.keep_shape {
        // Fold every mask that can be folded (a model pruned with --keep-shape, or one imported
        // from an ONNX export with zeroed channels).
        let (folded, stuck) = fineprune::prune::fold::fold_all(&file.model);
        for site in stuck {
            eprintln!("note: the pruned channels at {site} cannot be removed (the layer is not reached from one convolution through per-channel layers); they stay, masked to zero");
        }
        removed = file.model.graph.param_count() - folded.graph.param_count();
        file.model = folded;
    }
    fineprune::model::store::save(&file, &a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    let extra = if removed > 0 { format!(" ({removed} parameters of pruned channels removed)") } else { String::new() };
    println!("wrote {}{extra}", a.out.display());
    Ok(())
}

