//! `fineprune scan`: is this model backdoored? The verdict, the per-class table and the
//! reconstructed triggers.

use std::path::PathBuf;

use burn::tensor::Device;
use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::args::{SplitArgs, ModelArgs, load_model_and_data};
use super::progress::Bars;
use fineprune::scan::{Family, MarginConfig, NoiseConfig, Recheck, ScanConfig, ScanOutcome, Thresholds, recheck, scan};
use fineprune::trigger::poison::Target;

#[derive(Args)]
pub(super) struct ScanArgs {
    #[command(flatten)]
    pub(super) model: ModelArgs,
    /// The defender's clean data, KIND:PATH: the train split is inverted on, the validation
    /// split is held out to measure the reconstructed triggers.
    #[arg(long)]
    pub(super) data: String,
    /// Fraction of the train split the defender has as clean data.
    #[arg(long, default_value_t = 1.0)]
    pub(super) clean_fraction: f64,
    /// Candidate target classes, e.g. 0,3,7 (default: every class).
    #[arg(long, value_delimiter = ',')]
    pub(super) classes: Vec<usize>,
    /// Trigger families to reconstruct: patch (mask + pattern), additive (full image).
    #[arg(long, value_delimiter = ',', default_values = ["patch", "additive"], value_parser = parse_family)]
    pub(super) family: Vec<Family>,
    /// First-pass optimisation steps, the same for every class.
    #[arg(long, default_value_t = ScanConfig::default().steps)]
    pub(super) steps: usize,
    /// Further steps for the smallest classes and the controls.
    #[arg(long, default_value_t = ScanConfig::default().refine_steps)]
    pub(super) refine_steps: usize,
    /// Clean images per class per step.
    #[arg(long, default_value_t = ScanConfig::default().per_class)]
    pub(super) per_class: usize,
    /// Most images in one first-pass step, all classes together (with many classes each gets
    /// fewer, at least 8).
    #[arg(long, default_value_t = ScanConfig::default().max_batch)]
    pub(super) max_batch: usize,
    /// Outlier index at which a class is suspected.
    #[arg(long, default_value_t = fineprune::scan::SUSPECT_INDEX)]
    pub(super) suspect_index: f64,
    /// Outlier index at which a suspect whose reconstructed trigger works on held-out data makes
    /// the model "backdoored".
    #[arg(long, default_value_t = fineprune::scan::FLAG_INDEX)]
    pub(super) flag_index: f64,
    /// A suspect below the flag index is a target too when its refined trigger is at most this
    /// fraction of the median classes' (and works on held-out data).
    #[arg(long, default_value_t = fineprune::scan::MAX_CONTROL_RATIO)]
    pub(super) max_control_ratio: f64,
    /// An untargeted or all-to-all backdoor is flagged when a trigger towards any wrong class is
    /// at most this multiple of the smallest class's (and misleads held-out data).
    #[arg(long, default_value_t = fineprune::scan::UNTARGETED_RATIO)]
    pub(super) untargeted_ratio: f64,
    /// With --recheck: the re-inverted trigger at this fraction of the fresh scan's reference or
    /// more is as hard to find as on clean models (below it, and above the flag, the repair is
    /// not shown to have worked).
    #[arg(long, default_value_t = fineprune::scan::REMOVED_RATIO)]
    pub(super) removed_ratio: f64,
    /// Do not look for untargeted and all-to-all backdoors (one goal fewer to optimise).
    #[arg(long)]
    pub(super) no_untargeted: bool,
    /// A class whose maximum-margin index (how far its logit can be pushed above all others from
    /// random inputs, against the other classes') reaches this is a suspect, and a target when
    /// its reconstructed trigger works on held-out data.
    #[arg(long, default_value_t = fineprune::scan::MARGIN_FLAG)]
    pub(super) margin_flag: f64,
    /// Skip the maximum-margin statistic (its flag then never fires).
    #[arg(long)]
    pub(super) no_margins: bool,
    /// Also shake every neuron against the clean loss and report which class the model collapses
    /// onto (after BAN); reported beside the verdict, not part of it: clean models collapse too.
    #[arg(long)]
    pub(super) neuron_noise: bool,
    /// With --neuron-noise: the largest relative change of a neuron's scale and shift.
    #[arg(long, default_value_t = NoiseConfig::default().eps)]
    pub(super) noise_eps: f64,
    /// A trigger an earlier scan reconstructed (its FAMILY-classK.json): after the scan, search
    /// for it again on this model from where it was, to check a repair made anywhere (needs
    /// --recheck-target).
    #[arg(long, requires = "recheck_target")]
    pub(super) recheck: Option<PathBuf>,
    /// The class that trigger sent inputs to, or untargeted (any wrong class; all-to-all is
    /// looked for the same way).
    #[arg(long, requires = "recheck")]
    pub(super) recheck_target: Option<Target>,
    /// Seed of the clean subset and the image draws.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
    #[command(flatten)]
    pub(super) split: SplitArgs,
    /// Write result.json, the reconstructed triggers (trigger files and PNGs) and stamped
    /// examples here.
    #[arg(long)]
    pub(super) report: Option<PathBuf>,
    /// Print one JSON object on stdout instead of human-readable text.
    #[arg(long)]
    pub(super) json: bool,
}

fn parse_family(s: &str) -> std::result::Result<Family, String> {
    match s {
        "patch" => Ok(Family::Patch),
        "additive" => Ok(Family::Additive),
        _ => Err(format!("unknown trigger family {s:?}: use patch or additive")),
    }
}

impl ScanArgs {
    pub(super) fn config(&self) -> ScanConfig {
        ScanConfig {
            steps: self.steps,
            refine_steps: self.refine_steps,
            per_class: self.per_class,
            max_batch: self.max_batch,
            clean_fraction: self.clean_fraction,
            classes: (!self.classes.is_empty()).then(|| self.classes.clone()),
            families: self.family.clone(),
            untargeted: !self.no_untargeted,
            noise: self.neuron_noise.then(|| NoiseConfig { eps: self.noise_eps, ..NoiseConfig::default() }),
            margins: (!self.no_margins).then(MarginConfig::default),
            thresholds: Thresholds { suspect: self.suspect_index, flag: self.flag_index, max_control_ratio: self.max_control_ratio, margin_flag: self.margin_flag, untargeted_ratio: self.untargeted_ratio, removed_ratio: self.removed_ratio, ..Thresholds::default() },
            seed: self.seed,
            ..ScanConfig::default()
        }
    }
}

pub(super) fn cmd_scan(a: ScanArgs, device: &Device) -> Result<()> {
    if a.family.is_empty() {
        bail!("give at least one trigger family");
    }
    let (file, ds) = load_model_and_data(&a.model, &a.data, &a.split, device)?;
    let mut bars = Bars::new(a.json);
    let (outcome, recheck) = match (&a.recheck, a.recheck_target) {
        (Some(path), Some(target)) => {
            let trigger = fineprune::trigger::spec::read_file(path)?;
            let goal = match target {
                Target::Class(c) => Some(c),
                Target::Untargeted | Target::AllToAll => None,
            };
            let (o, r) = recheck(&file, &ds, &a.config(), &trigger, goal, device, &mut bars)?;
            (o, Some(r))
        }
        _ => (scan(&file, &ds, &a.config(), device, &mut bars)?, None),
    };
    drop(bars);
    if let Some(dir) = &a.report {
        let hold = if ds.val.is_empty() { &ds.test } else { &ds.val };
        let known = file.info.backdoor.as_ref().map(|b| &b.trigger);
        fineprune::report::write_scan_report(dir, &outcome, hold, ds.shape, known)?;
    }
    if a.json {
        let mut j = scan_json(&outcome);
        j["recheck"] = json!(recheck);
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        print_scan(&outcome, &file.info.classes);
        if let Some(r) = &recheck {
            println!("recheck: {}", describe_recheck(r));
        }
        if let Some(dir) = &a.report {
            println!("report: {} (result.json; FAMILY-classK.json are trigger files for --trigger file:PATH)", dir.display());
        }
    }
    Ok(())
}

/// One line on a trigger searched for again from where it was (`scan --recheck`, `defend`'s
/// check).
pub(super) fn describe_recheck(r: &Recheck) -> String {
    let re = &r.reinversion;
    format!(
        "the {} trigger of {} searched for again from where it was: size {} (started at {:.1}), {} the fresh scan's reference, held-out attack success {}{}",
        re.family.name(),
        re.target.map_or("the untargeted goal".to_string(), |t| format!("class {t}")),
        re.size.map_or("never reached".to_string(), |x| format!("{x:.1}")),
        re.start_size,
        r.reinverted_ratio.map_or("-".to_string(), |q| format!("{q:.2}x")),
        re.held_out.holdout_asr.map_or("-".to_string(), |v| format!("{v:.3}")),
        if r.reinverted_flagged {
            " -- FLAGGED: a small trigger works again, the backdoor is still there"
        } else if r.reinverted_removed {
            " -- as hard to find as on clean models"
        } else {
            " -- not flagged, but easier to find than on clean models: not shown gone"
        }
    )
}

/// The scan as JSON: `verdict` and `targets` are the names scripts read.
pub(super) fn scan_json(o: &ScanOutcome) -> serde_json::Value {
    json!({
        "verdict": o.verdict.name(),
        "targets": o.targets,
        "suspects": o.suspects,
        "untargeted": o.untargeted,
        "families": o.families,
        "margins": o.margins,
        "noise": o.noise,
        "thresholds": o.thresholds,
        "min_control_ratio": o.min_control_ratio(),
        "max_combined_index": o.max_combined_index(),
        "max_margin_index": o.max_margin_index(),
        "holdout_clean_accuracy": o.holdout_clean_accuracy,
        "inversion_samples": o.inversion_samples,
        "holdout_samples": o.holdout_samples,
        "notes": o.notes,
        "seconds": o.seconds,
        "seconds_by_stage": o.seconds_by_stage.iter().map(|(k, v)| json!({"stage": k, "seconds": v})).collect::<Vec<_>>(),
    })
}

pub(super) fn print_scan(o: &ScanOutcome, names: &[String]) {
    let name = |c: usize| names.get(c).cloned().unwrap_or_else(|| c.to_string());
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |x| format!("{x:.prec$}"));
    for f in &o.families {
        println!("{} family: size = {}; index = how far below the other classes' sizes (robust z on log sizes)", f.family.name(), f.size_unit);
        println!("  {:>5}  {:<24} {:>10} {:>9} {:>8}", "class", "name", "size", "batch ASR", "index");
        let mut rows: Vec<_> = f.classes.iter().collect();
        rows.sort_by(|a, b| b.index.unwrap_or(f64::MIN).total_cmp(&a.index.unwrap_or(f64::MIN)));
        for c in rows.iter().take(8) {
            let size = c.size.map_or("never".to_string(), |s| format!("{s:.2}"));
            println!("  {:>5}  {:<24} {:>10} {:>9.2} {:>8}", c.class, name(c.class), size, c.best_batch_asr, opt(c.index, 2));
        }
        if rows.len() > 8 {
            println!("  ... {} more classes (all in --json and the report)", rows.len() - 8);
        }
        for x in &f.finalists {
            let role = if x.control { "control" } else { "finalist" };
            println!("  {role} class {}: refined size {} ({} of the controls'), held-out attack success {} ({} inputs)", x.class, opt(x.size, 2), opt(x.control_ratio, 2), opt(x.held_out.holdout_asr, 3), x.held_out.holdout_samples);
        }
        if let Some(u) = &f.untargeted {
            println!("  untargeted (any wrong class): refined size {} ({} of the smallest finalist's), sends {} of held-out inputs to another class ({} inputs)", opt(u.refined_size, 2), opt(u.refined_ratio, 2), opt(u.held_out.holdout_asr, 3), u.held_out.holdout_samples);
        }
    }
    if let Some(margins) = &o.margins {
        println!("maximum margin: each class's largest logit lead over every other class, pushed up from random inputs; index = how far above the other classes' (robust z)");
        let mut rows: Vec<_> = margins.iter().collect();
        rows.sort_by(|a, b| b.index.unwrap_or(f64::MIN).total_cmp(&a.index.unwrap_or(f64::MIN)));
        for c in rows.iter().take(5) {
            println!("  class {:>3} {:<24} margin {:>9.2}  index {:>6}", c.class, name(c.class), c.margin, opt(c.index, 2));
        }
    }
    if let Some(n) = &o.noise {
        println!(
            "neuron noise (reported, not part of the verdict): with every neuron's scale and shift moved by up to {:.0}% against the clean loss ({} neurons in {} layers), class {} ({}) collects {:.3} of the other classes' held-out inputs (next class {:.3}; accuracy {:.3})",
            100.0 * n.eps,
            n.units,
            n.layers,
            n.class,
            name(n.class),
            n.share,
            n.runner_up_share,
            n.accuracy
        );
    }
    println!("{}", o.thresholds.rule());
    for n in &o.notes {
        println!("note: {n}");
    }
    let stages: Vec<String> = o.seconds_by_stage.iter().map(|(k, v)| format!("{k} {v:.1}s")).collect();
    println!("time: {:.1}s ({})", o.seconds, stages.join(", "));
    let untargeted_confirmed = o.untargeted.as_ref().is_some_and(|u| u.confirmed);
    match o.suspects.first().filter(|s| s.confirmed || !untargeted_confirmed) {
        Some(s) => println!(
            "verdict: {} -- suspected target {} ({}), {} family, {}index {:.2}{}, reconstructed trigger's held-out attack success {}",
            o.verdict.name(),
            s.class,
            name(s.class),
            s.family.name(),
            if s.combined_index == Some(s.index) { "combined " } else { "" },
            s.index,
            if s.wide_margin { ", maximum margin at its flag" } else { "" },
            opt(s.holdout_asr, 3)
        ),
        None => match &o.untargeted {
            Some(u) => println!(
                "verdict: {} -- no confirmed target class{}, but a {} trigger {:.2}x the smallest class's sends {} of held-out inputs to other classes (untargeted or all-to-all backdoor)",
                o.verdict.name(),
                if o.targets.is_empty() { String::new() } else { format!(" (suspected: {:?})", o.targets) },
                u.family.name(),
                u.refined_ratio,
                opt(u.holdout_asr, 3)
            ),
            None => println!("verdict: {} -- no class needs an unusually small change to be reached", o.verdict.name()),
        },
    }
}
