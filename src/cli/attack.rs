//! `fineprune attack`: train a backdoored model (any trigger, clean-label, pruning-aware).

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use fineprune::attack::{AttackConfig, PruningAwareConfig, backdoor, evaluate_attack, pruning_aware};
use fineprune::trigger::poison::Target;
use fineprune::progress::Progress;
use fineprune::trigger::spec as trigger_spec;

use super::args::{DataArgs, TrainOpts};
use super::progress::Bars;
use super::eval::print_asr;

#[derive(Args)]
pub(super) struct AttackArgs {
    #[command(flatten)]
    pub(super) data: DataArgs,
    /// Architecture to train (`fineprune archs` lists them).
    #[arg(long)]
    pub(super) arch: String,
    /// Write the backdoored model here (.safetensors or .onnx).
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Trigger spec: patch (BadNets, Gu et al. 2017), blend (Chen et al. 2017), sig (Barni et
    /// al. 2019; use with --clean-label), wanet (warping, Nguyen & Tran 2021), adaptive
    /// (Adap-Blend, Qi et al. 2023), dynamic (sample-specific, after Salem et al. 2022),
    /// sunglasses, tone; keys in the README.
    #[arg(long, default_value = "patch")]
    pub(super) trigger: String,
    /// A class number, all-to-all, or untargeted.
    #[arg(long, default_value = "0")]
    pub(super) target: String,
    /// Fraction of the training set poisoned (with --clean-label: of the target class).
    #[arg(long, default_value_t = 0.1)]
    pub(super) poison_rate: f64,
    /// Clean-label poisoning (Barni et al. 2019, Turner et al. 2019): only target-class
    /// training images get the trigger, and every label stays true.
    #[arg(long)]
    pub(super) clean_label: bool,
    /// Seed of the choice of poisoned samples.
    #[arg(long, default_value_t = 0)]
    pub(super) poison_seed: u64,
    /// The paper's pruning-aware attack: train clean, prune dormant channels, retrain on poison,
    /// re-instate the pruned channels as dormant decoys.
    #[arg(long)]
    pub(super) pruning_aware: bool,
    /// Pruning-aware: fraction of the layer to prune (default: as many as keep clean
    /// validation accuracy within --max-acc-drop).
    #[arg(long)]
    pub(super) prune_fraction: Option<f64>,
    /// Pruning-aware: allowed drop in clean validation accuracy.
    #[arg(long, default_value_t = 0.04)]
    pub(super) max_acc_drop: f64,
    /// Pruning-aware: layer to prune (default: the architecture's last conv layer).
    #[arg(long)]
    pub(super) layer: Option<String>,
    /// Count test inputs of the target class in the attack success rate.
    #[arg(long)]
    pub(super) asr_include_target: bool,
    #[command(flatten)]
    pub(super) opts: TrainOpts,
    /// Print the results as JSON on stdout (no progress bar).
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn cmd_attack(a: AttackArgs, device: &Device) -> Result<()> {
    let start = Instant::now();
    let ds = a.data.load()?;
    let trigger = trigger_spec::parse(&a.trigger)?;
    let target: Target = a.target.parse()?;
    target.validate(ds.classes.len())?;
    let cfg = AttackConfig { trigger: trigger.clone(), target, poison_rate: a.poison_rate, poison_seed: a.poison_seed, clean_label: a.clean_label, train: a.opts.config() };
    let mut bars = Bars::new(false);
    let trained = if a.pruning_aware {
        let pa = PruningAwareConfig { fraction: a.prune_fraction, max_acc_drop: a.max_acc_drop, layer: a.layer.clone(), ..Default::default() };
        eprintln!("pruning-aware attack: (a) clean training, (b) pruning dormant channels, (c) poisoned retraining, (d) re-instating decoys");
        pruning_aware(&a.arch, &ds, &cfg, &pa, &device.clone().autodiff(), &mut bars)?
    } else {
        backdoor(&a.arch, &ds, &cfg, &device.clone().autodiff(), &mut bars)?
    };
    trained.file.save(&a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    bars.phase("evaluating clean accuracy and attack success on the test split", ds.test.len());
    let e = evaluate_attack(&trained.file, &ds.test, &trigger, target, a.asr_include_target, device, &mut bars)?;
    bars.clear();
    let seconds = start.elapsed().as_secs_f64();
    let record = trained.file.info.backdoor.as_ref().expect("attacks record their backdoor");
    if a.json {
        let out = json!({
            "model": a.out,
            "arch": a.arch,
            "trigger": e.trigger,
            "target": e.target,
            "poison": record.poison,
            "pruning_aware": record.pruning_aware,
            "clean_accuracy": e.clean.accuracy,
            "per_class_accuracy": e.clean.per_class_accuracy,
            "attack_success_rate": e.attack_success_rate.rate,
            "attack_success_rate_ci95": e.attack_success_rate.ci95,
            "attack_samples": e.attack_success_rate.samples,
            "attack_convention": e.attack_success_rate.convention,
            "samples": e.clean.samples,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("saved {}: {} of {} training samples poisoned", a.out.display(), record.poison.count, record.poison.train_samples);
        if let Some(pa) = &record.pruning_aware {
            println!(
                "pruning-aware: {} of {} channels of {} re-instated as decoys (val accuracy {:.4} -> {:.4} when pruned)",
                pa.decoys.len(),
                pa.channels,
                pa.layer,
                pa.val_accuracy_before,
                pa.val_accuracy_pruned
            );
        }
        println!("test clean accuracy: {:.4} ({} samples, {:.1}s)", e.clean.accuracy, e.clean.samples, seconds);
        print_asr(&e);
    }
    Ok(())
}

