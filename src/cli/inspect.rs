//! `fineprune inspect`: candidate pruning sites and per-channel activations, clean vs triggered.

use std::path::PathBuf;

use burn::tensor::Device;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use fineprune::data::Layout;
use fineprune::progress::Progress;

use super::args::{SplitArgs, ModelArgs, load_model_and_data, resolve_backdoor, layer_name};
use super::progress::Bars;
use super::choice::ChoiceParser;

#[derive(Args)]
pub(super) struct InspectArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Dataset as KIND:PATH; without it, the model's layers are listed.
    #[arg(long)]
    pub(super) data: Option<String>,
    /// Trigger to compare against (default: the model's own, if it carries one).
    #[arg(long)]
    pub(super) trigger: Option<String>,
    /// Triggered inputs given as data (KIND:PATH) to compare against, instead of --trigger.
    #[arg(long, conflicts_with = "trigger")]
    pub(super) asr_data: Option<String>,
    /// npz data: layout of x (default: inferred).
    #[arg(long, value_parser = ChoiceParser::<Layout>::new())]
    pub(super) layout: Option<Layout>,
    /// Layer to inspect (default: the last convolutional layer).
    #[arg(long)]
    pub(super) layer: Option<String>,
    /// Split whose activations are measured: train, val or test.
    #[arg(long, default_value = "val")]
    pub(super) split: String,
    /// Write the activation plot here (.svg).
    #[arg(long)]
    pub(super) plot: Option<PathBuf>,
    /// Print the activations as JSON on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn cmd_inspect(a: InspectArgs, device: &Device) -> Result<()> {
    let Some(data) = a.data.as_deref() else {
        let file = a.model.load(device).context("loading the model")?;
        let g = &file.model.graph;
        let shapes = file.model.shapes();
        let site = fineprune::prune::find_site(&file.model, None).ok();
        let aliases: std::collections::HashMap<&str, &str> = file.info.onnx.iter().flat_map(|io| io.node_names.iter().map(|(k, v)| (v.as_str(), k.as_str()))).collect();
        println!("{} ({}): input {:?}, {} classes, {} parameters", a.model.path().display(), file.info.arch, g.input_shape, file.info.classes.len(), g.param_count());
        println!("candidate layers to prune (--layer takes the conv's or the activation's name):");
        for (conv, act) in fineprune::prune::candidate_sites(g) {
            let mark = if site.as_ref().is_some_and(|s| s.index == act || s.index == conv) { "  <- default prune site" } else { "" };
            let alias = aliases.get(g.nodes[conv].name.as_str()).map(|a| format!(" (ONNX node {a})")).unwrap_or_default();
            if let fineprune::model::Shape::Map([c, h, w]) = shapes[act] {
                println!("  {:<28} -> {:<28} {c} channels, {h}x{w}{alias}{mark}", g.nodes[conv].name, g.nodes[act].name);
            }
        }
        if let Some(s) = site.as_ref().filter(|s| !candidate_sites_contain(g, s.index)) {
            println!("default prune site: {} ({} channels): {}", s.name, s.channels, s.reason);
        }
        return Ok(());
    };
    let (file, ds) = load_model_and_data(&a.model, data, &SplitArgs { layout: a.layout, ..SplitArgs::default() }, device)?;
    let site = fineprune::prune::find_site(&file.model, layer_name(&file, a.layer.as_deref()).as_deref())?;
    eprintln!("layer {} ({} channels): {}", site.name, site.channels, site.reason);
    let split = ds.split(&a.split)?;
    let mut bars = Bars::new(a.json);
    bars.phase(&format!("mean activations on {} clean {} samples", split.len(), a.split), split.len());
    let clean = fineprune::prune::channel_means(&file.model, split, &ds.normalization, site.index, device, 256, &mut bars)?;
    let triggered = match resolve_backdoor(&file, a.trigger.as_deref(), a.asr_data.as_deref(), None, a.layout)? {
        Some((triggered, _)) => {
            let t = triggered.inputs(split, ds.shape)?;
            bars.phase(&format!("mean activations on {} triggered samples", t.len()), t.len());
            Some((triggered.describe(), fineprune::prune::channel_means(&file.model, &t, &ds.normalization, site.index, device, 256, &mut bars)?))
        }
        None => None,
    };
    bars.clear();
    let order = fineprune::prune::ranking(&clean);
    if let Some(path) = &a.plot {
        let chart = fineprune::report::activation_chart(&site.name, &order, &clean, triggered.as_ref().map(|t| t.1.as_slice()));
        fineprune::fsutil::write_atomic(path, chart.to_svg().as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if a.json {
        let out = json!({
            "layer": site.name,
            "reason": site.reason,
            "order": order,
            "clean_mean_activation": clean,
            "triggered_mean_activation": triggered.as_ref().map(|t| &t.1),
            "trigger": triggered.as_ref().map(|t| &t.0),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("channels of {} by increasing mean clean activation ({} split):", site.name, a.split);
        println!("  {:>5} {:>8} {:>12} {:>12}", "rank", "channel", "clean", "triggered");
        for (rank, &c) in order.iter().enumerate() {
            let t = triggered.as_ref().map(|t| format!("{:12.4}", t.1[c])).unwrap_or_default();
            println!("  {rank:>5} {c:>8} {:12.4} {t}", clean[c]);
        }
    }
    Ok(())
}

pub(super) fn candidate_sites_contain(g: &fineprune::model::Graph, i: usize) -> bool {
    fineprune::prune::candidate_sites(g).iter().any(|&(c, a)| c == i || a == i)
}

