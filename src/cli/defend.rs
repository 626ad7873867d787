//! `fineprune defend`: run one defense (or `auto`) under the clean-accuracy budget, checked
//! against the trigger given or, without one, against reconstructed ones.

use std::path::PathBuf;

use burn::tensor::Device;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use fineprune::defense::{AnpConfig, Budget, DefenseConfig, FstConfig, KnownAttack, Method, StopRule, defend};
use fineprune::defense::verify::RepairStatus;
use fineprune::train::TrainConfig;

use super::args::{SplitArgs, ModelArgs, TriggerArgs, load_model_and_data, resolve_backdoor, layer_name};
use super::progress::Bars;
use super::choice::ChoiceParser;
use super::Exit;

#[derive(Args)]
pub(super) struct DefendArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// The defender's clean data, KIND:PATH (the model's own dataset kind).
    #[arg(long)]
    pub(super) data: String,
    /// The defense: the paper's prune, finetune, fineprune; the trigger-free anp (adversarial
    /// neuron pruning), fst (feature-shift tuning), anp+fst; unlearn (with a reconstructed
    /// trigger); or auto (all of them, the best verified repair kept).
    #[arg(long, value_parser = ChoiceParser::<Method>::new(), default_value = "fineprune")]
    pub(super) method: Method,
    /// Output model (.safetensors or .onnx), written atomically.
    #[arg(long)]
    pub(super) out: PathBuf,
    /// The clean-accuracy budget every method's choices are held to: the most clean validation
    /// accuracy the defense may cost (absolute points unless --relative; the paper's 4%).
    #[arg(long, default_value_t = 0.04)]
    pub(super) max_acc_drop: f64,
    /// Read --max-acc-drop as a fraction of the suspect model's validation accuracy.
    #[arg(long)]
    pub(super) relative: bool,
    /// prune/fineprune: prune this fraction of the layer instead.
    #[arg(long, conflicts_with = "prune_count")]
    pub(super) prune_fraction: Option<f64>,
    /// prune/fineprune: prune this many channels instead.
    #[arg(long)]
    pub(super) prune_count: Option<usize>,
    /// prune/fineprune: layer to prune (default: the last convolutional layer).
    #[arg(long)]
    pub(super) layer: Option<String>,
    /// finetune/fineprune: fine-tuning epochs.
    #[arg(long, default_value_t = 5)]
    pub(super) epochs: usize,
    /// finetune/fineprune: learning rate (Adam; 10x below the training default).
    #[arg(long, default_value_t = 1e-4)]
    pub(super) lr: f64,
    /// finetune/fineprune: batch size.
    #[arg(long, default_value_t = 64)]
    pub(super) batch_size: usize,
    /// Fraction of the train split the defender has as clean data.
    #[arg(long, default_value_t = 1.0)]
    pub(super) clean_fraction: f64,
    /// Seed of the defender's data subset, shuffles, noise and re-initialisation.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    #[command(flatten)]
    pub(super) anp: AnpArgs,
    #[command(flatten)]
    pub(super) fst: FstArgs,
    #[command(flatten)]
    pub(super) split: SplitArgs,
    #[command(flatten)]
    pub(super) attack: TriggerArgs,
    /// Keep the layers' shapes (pruned channels masked to zero) instead of removing them.
    #[arg(long)]
    pub(super) keep_shape: bool,
    /// Write --out even when the result is outside the clean-accuracy budget (it is not a
    /// repair; the exit status is 3 either way).
    #[arg(long)]
    pub(super) keep_out_of_budget: bool,
    /// Without a trigger, do not check the repair with a scan (reconstructed trigger before and
    /// after, fresh scan of the output).
    #[arg(long)]
    pub(super) no_verify: bool,
    /// unlearn: the share of the clean data stamped with the reconstructed trigger.
    #[arg(long, default_value_t = 0.2)]
    pub(super) unlearn_share: f64,
    /// unlearn: the most rounds; after each but the last the trigger is searched for again on
    /// the unlearned model, and one still found smaller than a median class's is unlearned too
    /// (1: Neural Cleanse's single round).
    #[arg(long, default_value_t = fineprune::defense::UNLEARN_ROUNDS)]
    pub(super) unlearn_rounds: usize,
    /// Write curve.csv, curve.svg and result.json here.
    #[arg(long)]
    pub(super) report: Option<PathBuf>,
    /// Print one JSON object on stdout instead of human-readable text.
    #[arg(long)]
    pub(super) json: bool,
}

/// Adversarial neuron pruning's settings (defaults: the reference implementation's).
#[derive(Args)]
pub(super) struct AnpArgs {
    /// anp: bound of the adversarial neuron noise.
    #[arg(long, default_value_t = 0.4)]
    pub(super) anp_eps: f64,
    /// anp: weight of the clean loss against the perturbed loss.
    #[arg(long, default_value_t = 0.2)]
    pub(super) anp_alpha: f64,
    /// anp: learning rate of the masks (SGD, momentum 0.9).
    #[arg(long, default_value_t = 0.2)]
    pub(super) anp_lr: f64,
    /// anp: clean samples per mask step.
    #[arg(long, default_value_t = 128)]
    pub(super) anp_batch_size: usize,
    /// anp: mask steps (default: one pass over the clean set, between 100 and 500 steps).
    #[arg(long)]
    pub(super) anp_iterations: Option<usize>,
    /// anp: prune neurons whose mask is at most this, instead of choosing the threshold on
    /// clean validation data.
    #[arg(long)]
    pub(super) anp_threshold: Option<f64>,
    /// anp: normalise BatchNorm with its running statistics while optimising the masks,
    /// instead of batch statistics as the reference does.
    #[arg(long)]
    pub(super) anp_running_stats: bool,
}

/// Feature-shift tuning's settings (defaults: the authors').
#[derive(Args)]
pub(super) struct FstArgs {
    /// fst: weight of the penalty on the head's alignment with its old weights (default: the
    /// authors' 0.2 up to 10 classes, 0.1 beyond, capped at 1.25/|W0|^2; halved once if the
    /// default misses the budget).
    #[arg(long)]
    pub(super) fst_alpha: Option<f64>,
    /// fst: epochs (SGD, momentum 0.9, cosine schedule; the best validation epoch is kept;
    /// default 10 up to 10 classes, 20 beyond).
    #[arg(long)]
    pub(super) fst_epochs: Option<usize>,
    /// fst: learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub(super) fst_lr: f64,
    /// fst: batch size.
    #[arg(long, default_value_t = 128)]
    pub(super) fst_batch_size: usize,
}

pub(super) fn cmd_defend(a: DefendArgs, device: &Device) -> Result<()> {
    let (file, ds) = load_model_and_data(&a.model, &a.data, &a.split, device)?;
    let known = match resolve_backdoor(&file, a.attack.trigger.as_deref(), a.attack.asr_data.as_deref(), a.attack.target.as_deref(), a.split.layout)? {
        Some((trigger, Some(target))) => Some(KnownAttack { trigger, target, include_target: a.attack.asr_include_target }),
        Some((_, None)) => bail!("--trigger and --asr-data need --target to measure attack success"),
        None => None,
    };
    let mut cfg = DefenseConfig::paper(a.method).with_seed(a.seed);
    cfg.budget = Budget { drop: a.max_acc_drop, relative: a.relative };
    cfg.stop = match (a.prune_fraction, a.prune_count) {
        (Some(fraction), _) => StopRule::Fraction { fraction },
        (_, Some(count)) => StopRule::Count { count },
        _ => StopRule::WithinBudget,
    };
    cfg.layer = layer_name(&file, a.layer.as_deref());
    cfg.clean_fraction = a.clean_fraction;
    cfg.fold = !a.keep_shape;
    // A report draws the curves; without one only the before and after numbers are shown.
    cfg.test_curve = a.report.is_some();
    cfg.finetune = TrainConfig { epochs: a.epochs, lr: a.lr, batch_size: a.batch_size, ..cfg.finetune };
    cfg.anp = AnpConfig {
        eps: a.anp.anp_eps,
        alpha: a.anp.anp_alpha,
        lr: a.anp.anp_lr,
        batch_size: a.anp.anp_batch_size,
        iterations: a.anp.anp_iterations,
        threshold: a.anp.anp_threshold,
        batch_stats: !a.anp.anp_running_stats,
        ..cfg.anp
    };
    cfg.fst = FstConfig { alpha: a.fst.fst_alpha, epochs: a.fst.fst_epochs, lr: a.fst.fst_lr, batch_size: a.fst.fst_batch_size, ..cfg.fst };
    cfg.unlearn_share = a.unlearn_share;
    cfg.unlearn_rounds = a.unlearn_rounds;
    // With no trigger to measure, the repair is checked against reconstructed ones.
    if known.is_none() && !a.no_verify {
        cfg.verify = Some(fineprune::scan::ScanConfig { clean_fraction: a.clean_fraction, seed: a.seed, ..Default::default() });
    }
    let mut bars = Bars::new(a.json);
    let outcome = defend(&file, &ds, &cfg, known.as_ref(), &device.clone().autodiff(), &mut bars)?;
    eprintln!("layer {} ({} units): {}", outcome.layer, outcome.channels, outcome.layer_reason);
    for n in &outcome.notes {
        eprintln!("note: {n}");
    }
    // A result outside the budget is not a repair: not written unless asked for.
    let write = outcome.within_budget || a.keep_out_of_budget;
    if write {
        fineprune::model::store::save(&outcome.model, &a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    }
    if let Some(dir) = &a.report {
        fineprune::report::write_defense_report(dir, &outcome)?;
    }
    if a.json {
        let snap = |s: &fineprune::defense::Snapshot| json!({"val_accuracy": s.val_accuracy, "clean_accuracy": s.clean_accuracy, "attack_success_rate": s.attack_success_rate, "attack_success_rate_ci95": s.attack_success_rate_ci95});
        let out = json!({
            "method": outcome.method,
            "model": a.out,
            "layer": outcome.layer,
            "pruned_channels": outcome.pruned_channels,
            "pruned_fraction": outcome.pruned_fraction,
            "pruned_by_layer": outcome.pruned_by_layer,
            "before": snap(&outcome.before),
            "after": snap(&outcome.after),
            "within_budget": outcome.within_budget,
            "budget": outcome.budget,
            "attack_convention": outcome.attack_convention,
            "finetune_epochs": outcome.finetune_epochs,
            "anp": outcome.anp.as_ref().map(|r| json!({"iterations": r.iterations, "threshold": r.threshold, "rule": r.rule, "clean_samples": r.clean_samples})),
            "fst": outcome.fst,
            "verification": outcome.verification,
            "candidates": outcome.candidates,
            "written": write,
            "folded": outcome.folded,
            "notes": outcome.notes,
            "seconds": outcome.seconds,
            "seconds_by_stage": outcome.seconds_by_stage.iter().map(|(k, v)| json!({"stage": k, "seconds": v})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let asr = |s: &fineprune::defense::Snapshot| s.attack_success_rate.map(|r| format!(", attack success {r:.4}")).unwrap_or_default();
        let mut what = vec![];
        if outcome.channels > 0 {
            what.push(format!("pruned {} of {} units ({:.1}%)", outcome.pruned_channels, outcome.channels, 100.0 * outcome.pruned_fraction));
        }
        if let Some(t) = outcome.anp.as_ref().and_then(|r| r.threshold) {
            what.push(format!("mask threshold {t:.2}"));
        }
        if outcome.finetune_epochs > 0 {
            what.push(format!("tuned {} epochs", outcome.finetune_epochs));
        }
        println!("{} on {}: {}; {:.1}s", outcome.method, outcome.layer, what.join(", "), outcome.seconds);
        println!("  before: val accuracy {:.4}, test accuracy {:.4}{}", outcome.before.val_accuracy, outcome.before.clean_accuracy, asr(&outcome.before));
        println!("  after:  val accuracy {:.4}, test accuracy {:.4}{}", outcome.after.val_accuracy, outcome.after.clean_accuracy, asr(&outcome.after));
        if let Some(v) = &outcome.verification {
            let r = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
            match v.target {
                Some(t) => println!(
                    "  check without the trigger: reconstructed trigger of class {t} ({}), attack success {} -> {}; fresh scan of the output: {}{}",
                    v.family.map_or("", |f| f.name()),
                    r(v.reconstructed_asr_before),
                    r(v.reconstructed_asr_after),
                    v.after_verdict.name(),
                    repair_phrase(v.status)
                ),
                None if v.untargeted => println!(
                    "  check without the trigger: reconstructed untargeted trigger ({}), share of inputs sent to another class {} -> {}; fresh scan of the output: {}{}",
                    v.family.map_or("", |f| f.name()),
                    r(v.reconstructed_asr_before),
                    r(v.reconstructed_asr_after),
                    v.after_verdict.name(),
                    repair_phrase(v.status)
                ),
                None => println!("  check without the trigger: the suspect scan suspected no class ({}); fresh scan of the output: {}{}", v.before_verdict.name(), v.after_verdict.name(), repair_phrase(v.status)),
            }
            if let Some(r) = &v.recheck {
                println!("  on the output, {}", super::scan::describe_recheck(r));
            }
        }
        for c in &outcome.candidates {
            let r = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
            let status = match &c.error {
                Some(e) => format!("failed: {e}"),
                None => format!(
                    "val accuracy {:.4}{}, reconstructed-trigger attack success {}, re-inverted {}{}{}",
                    c.val_accuracy,
                    if c.within_budget { "" } else { " (outside the budget)" },
                    r(c.reconstructed_asr_after),
                    c.reinverted_ratio.map_or("-".to_string(), |q| format!("{q:.2}x")),
                    if c.status == RepairStatus::NoEvidence { String::new() } else { format!(", {}", c.status.name()) },
                    c.attack_success_rate.map(|v| format!(", known-trigger attack success {v:.4}")).unwrap_or_default()
                ),
            };
            println!("  {} {:<9} {status}", if c.chosen { "*" } else { " " }, c.method.name());
        }
        if !outcome.within_budget {
            println!("  NOT within the clean-accuracy budget (see the note above)");
        }
        let stages: Vec<String> = outcome.seconds_by_stage.iter().map(|(k, v)| format!("{k} {v:.1}s")).collect();
        println!("  time: {}", stages.join(", "));
        let form = if outcome.folded { "pruned channels removed" } else if outcome.pruned_channels > 0 { "pruned channels masked to zero" } else { "nothing pruned" };
        if write {
            println!("saved {} ({form})", a.out.display());
        } else {
            println!("not saved: outside the budget (--keep-out-of-budget writes it anyway)");
        }
        if let Some(dir) = &a.report {
            println!("report: {}", dir.display());
        }
    }
    if !outcome.within_budget {
        return Err(Exit::OUT_OF_BUDGET.into());
    }
    Ok(())
}

/// The repair check's answer, after the fresh scan's verdict.
fn repair_phrase(status: RepairStatus) -> &'static str {
    match status {
        RepairStatus::StillFlagged => " -- STILL FLAGGED: the backdoor is still there",
        RepairStatus::Unverified => " -- UNVERIFIED: not flagged, but the old trigger is still easier to find than on clean models (or the fresh scan is inconclusive); measure the repair with a known trigger if you have one",
        RepairStatus::NoEvidence => " -- no evidence left",
    }
}
