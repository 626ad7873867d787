//! `fineprune eval`: clean accuracy and attack success of a model on a split (image folders
//! streamed a chunk at a time).

use std::time::Instant;

use burn::tensor::Device;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use fineprune::data::{DataSpec, Kind};
use fineprune::progress::Progress;
use fineprune::attack::{AttackEval, evaluate_chunks, evaluate_folder};
use fineprune::metrics::ClassReport;
use fineprune::trigger::poison::Target;
use fineprune::trigger::Triggered;
use fineprune::model::ModelFile;

use super::args::{SplitArgs, ModelArgs, TriggerArgs, load_model_and_data, resolve_backdoor};
use super::progress::Bars;

#[derive(Args)]
pub(super) struct EvalArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// Dataset as KIND:PATH.
    #[arg(long)]
    pub(super) data: String,
    /// Split to evaluate: train, val or test.
    #[arg(long, default_value = "test")]
    pub(super) split: String,
    #[command(flatten)]
    pub(super) carve: SplitArgs,
    #[command(flatten)]
    pub(super) attack: TriggerArgs,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn cmd_eval(a: EvalArgs, device: &Device) -> Result<()> {
    let start = Instant::now();
    let spec: DataSpec = a.data.parse()?;
    let mut bars = Bars::new(a.json);
    let (file, report, asr) = if spec.kind == Kind::Folder {
        eval_folder_streamed(&a, &spec, device, &mut bars)?
    } else {
        let (file, ds) = load_model_and_data(&a.model, &a.data, &a.carve, device)?;
        let split = ds.split(&a.split)?;
        let attack = attack_to_measure(&a, &file)?;
        bars.phase(&format!("evaluating on the {} split", a.split), split.len());
        let chunks = std::iter::once(Ok(std::borrow::Cow::Borrowed(split)));
        let (report, asr) = evaluate_chunks(&file, chunks, split.len(), attack.as_ref().map(|(t, target)| (t, *target, a.attack.asr_include_target)), device, &mut bars)?;
        (file, report, asr)
    };
    bars.clear();
    let seconds = start.elapsed().as_secs_f64();
    if a.json {
        let mut out = json!({
            "model": a.model.path(),
            "split": a.split,
            "clean_accuracy": report.accuracy,
            "per_class_accuracy": report.per_class_accuracy,
            "confusion_matrix": report.confusion,
            "samples": report.samples,
            "seconds": seconds,
        });
        if let Some(e) = &asr {
            out["attack_success_rate"] = json!(e.attack_success_rate.rate);
            out["attack_success_rate_ci95"] = json!(e.attack_success_rate.ci95);
            out["attack_samples"] = json!(e.attack_success_rate.samples);
            out["attack_convention"] = json!(e.attack_success_rate.convention);
            out["trigger"] = json!(e.trigger);
            out["target"] = json!(e.target);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&report, &file.info.classes, &a.split, seconds);
        if let Some(e) = &asr {
            print_asr(e);
        }
    }
    Ok(())
}

/// The triggered inputs and target `eval` measures, if any.
fn attack_to_measure(a: &EvalArgs, file: &ModelFile) -> Result<Option<(Triggered, Target)>> {
    match resolve_backdoor(file, a.attack.trigger.as_deref(), a.attack.asr_data.as_deref(), a.attack.target.as_deref(), a.carve.layout)? {
        Some((triggered, Some(target))) => Ok(Some((triggered, target))),
        Some((_, None)) => bail!("--trigger and --asr-data need --target (a class number, all-to-all or untargeted) to measure attack success"),
        None if a.attack.target.is_some() => bail!("--target needs --trigger or --asr-data"),
        None => Ok(None),
    }
}

/// `eval` on an image folder: only the asked split's files are decoded, a chunk at a time.
fn eval_folder_streamed(a: &EvalArgs, spec: &DataSpec, device: &burn::tensor::Device, bars: &mut Bars) -> Result<(ModelFile, ClassReport, Option<AttackEval>)> {
    let file = a.model.load(device).context("loading the model")?;
    let attack = attack_to_measure(a, &file)?;
    let measured = attack.as_ref().map(|(t, target)| (t, *target, a.attack.asr_include_target));
    let (report, asr) = evaluate_folder(&file, &spec.path, &a.split, &a.carve.options(None), measured, device, bars).with_context(|| format!("evaluating {spec}"))?;
    Ok((file, report, asr))
}

pub(super) fn print_asr(e: &AttackEval) {
    let a = &e.attack_success_rate;
    let rate = a.rate.map_or("unknown".to_string(), |r| format!("{r:.4}"));
    println!(
        "attack success rate: {rate} (95% CI {:.4}-{:.4}, {} triggered samples; trigger {}, target {})",
        a.ci95[0], a.ci95[1], a.samples, e.trigger, e.target
    );
    println!("  convention: {}", a.convention);
}

pub(super) fn print_report(r: &ClassReport, classes: &[String], split: &str, seconds: f64) {
    println!("{split} accuracy: {:.4} ({} samples, {:.1}s)", r.accuracy, r.samples, seconds);
    println!("per-class accuracy:");
    for (name, acc) in classes.iter().zip(&r.per_class_accuracy) {
        match acc {
            Some(a) => println!("  {name:<36} {a:.4}"),
            None => println!("  {name:<36} (no samples)"),
        }
    }
    if classes.len() <= 20 {
        println!("confusion matrix (rows: true class, columns: predicted):");
        for (name, row) in classes.iter().zip(&r.confusion) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>5}")).collect();
            println!("  {name:>6} {}", cells.join(""));
        }
    }
}

