//! Defenses: the paper's three (pruning, fine-tuning, fine-pruning) and two trigger-free
//! defenses that reach backdoors living in clean-active neurons: adversarial neuron pruning
//! ([`anp`]) and feature-shift tuning ([`fst`]), alone or combined.
//!
//! The defender has the suspect model and a little clean data; it does not know the trigger.
//! Every choice (which channels, how many, which threshold, which epoch) is made on clean
//! *validation* data and held to one clean-accuracy budget (`max_acc_drop`). When a trigger is
//! known to the evaluator it is used only to measure attack success before and after, and
//! along the pruning curves, never to steer.

pub mod anp;
pub mod fst;
mod paper;
pub mod verify;

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use crate::attack::{AttackEval, evaluate_triggered};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::metrics::{ClassReport, predict};
use crate::model::ModelFile;
use crate::train::TrainConfig;
use crate::progress::Progress;
use crate::trigger::Triggered;
use crate::trigger::poison::Target;

pub use crate::data::defender_split;
pub use anp::AnpConfig;
pub use fst::FstConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Method {
    /// Prune the last conv layer's least active channels (the paper).
    #[serde(rename = "prune")]
    Prune,
    /// Fine-tune all weights on clean data (the paper's control).
    #[serde(rename = "finetune")]
    Finetune,
    /// Prune, then fine-tune (the paper's defense).
    #[serde(rename = "fineprune")]
    Fineprune,
    /// Adversarial neuron pruning: learn per-neuron masks under adversarial neuron noise, prune
    /// the low ones.
    #[serde(rename = "anp")]
    Anp,
    /// Feature-shift tuning: re-initialise the classifier head and fine-tune away from it.
    #[serde(rename = "fst")]
    Fst,
    /// Adversarial neuron pruning, then feature-shift tuning of the pruned model.
    #[serde(rename = "anp+fst")]
    AnpFst,
    /// Neural Cleanse's mitigation: scan, then fine-tune on clean data with a share of it
    /// stamped with the reconstructed trigger at its true label; in rounds, each unlearning the
    /// trigger found again near the last while it is still small.
    #[serde(rename = "unlearn")]
    Unlearn,
    /// Run fineprune, anp, fst and unlearn (cheapest first), drop results outside the budget,
    /// keep the one the check without the trigger answers best whose old trigger is hardest to
    /// re-invert.
    #[serde(rename = "auto")]
    Auto,
}

crate::choice::choices!(Method {
    Prune => "prune", "prune the last conv layer's least active channels (the paper)";
    Finetune => "finetune", "fine-tune all weights on clean data (the paper's control)";
    Fineprune => "fineprune", "prune, then fine-tune (the paper's defense)";
    Anp => "anp", "adversarial neuron pruning: masks learnt under adversarial neuron noise, low ones pruned";
    Fst => "fst", "feature-shift tuning: re-initialise the classifier head, fine-tune away from it";
    AnpFst => "anp+fst", "adversarial neuron pruning, then feature-shift tuning";
    Unlearn => "unlearn", "Neural Cleanse's mitigation: scan, then fine-tune with the reconstructed trigger at true labels, in rounds while it is found again small";
    Auto => "auto", "all of fineprune, anp, fst, unlearn; keep the in-budget one fresh scans check best";
});

impl Method {
    pub const ALL: [Method; 6] = [Method::Prune, Method::Finetune, Method::Fineprune, Method::Anp, Method::Fst, Method::AnpFst];

    /// The name the CLI and the reports use (`anp+fst`, not `AnpFst`).
    pub fn name(self) -> &'static str {
        crate::choice::Choice::name(self)
    }

    /// The paper's last-conv-layer pruning is part of this method.
    pub fn prunes_site(self) -> bool {
        matches!(self, Method::Prune | Method::Fineprune)
    }

    pub fn uses_anp(self) -> bool {
        matches!(self, Method::Anp | Method::AnpFst)
    }

    pub fn uses_fst(self) -> bool {
        matches!(self, Method::Fst | Method::AnpFst)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How much clean validation accuracy a defense may cost: every method's choices are held to
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Budget {
    /// Absolute points (0.04 = four points), or a fraction of the suspect model's accuracy
    /// with `relative`.
    pub drop: f64,
    pub relative: bool,
}

impl Budget {
    /// The paper's 4% absolute.
    pub const PAPER: Budget = Budget { drop: 0.04, relative: false };

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.drop) {
            return Err(Error::invalid(format!("tolerance {} is not in [0, 1]", self.drop)));
        }
        Ok(())
    }

    /// Whether `acc` is within the budget of `base`. A small slack counts a drop exactly at the
    /// tolerance as within it.
    pub fn allows(&self, base: f64, acc: f64) -> bool {
        let lost = if self.relative { (base - acc) / base.max(f64::MIN_POSITIVE) } else { base - acc };
        lost <= self.drop + 1e-12
    }

    /// Walking up a sequence of ever stronger settings (`accuracies[0]` is the suspect model's),
    /// the last one before the first that leaves the budget.
    pub fn last_within(&self, accuracies: &[f64]) -> usize {
        let base = accuracies[0];
        accuracies.iter().position(|&a| !self.allows(base, a)).map_or(accuracies.len() - 1, |k| k - 1)
    }
}

/// How many channels the paper's pruning removes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum StopRule {
    /// Prune one channel at a time while clean validation accuracy stays within the budget,
    /// then keep the last state within it.
    WithinBudget,
    Fraction { fraction: f64 },
    Count { count: usize },
}

impl StopRule {
    pub fn validate(&self, channels: usize) -> Result<()> {
        match *self {
            StopRule::Fraction { fraction } if !(0.0..=1.0).contains(&fraction) => Err(Error::invalid(format!("prune fraction {fraction} is not in [0, 1]"))),
            StopRule::Count { count } if count > channels => Err(Error::invalid(format!("cannot prune {count} of {channels} channels"))),
            _ => Ok(()),
        }
    }

    /// The number of channels to prune, given validation accuracy at every level
    /// (`accuracies[k]` after pruning k channels).
    pub fn choose(&self, accuracies: &[f64], budget: &Budget) -> usize {
        let channels = accuracies.len() - 1;
        match *self {
            StopRule::WithinBudget => budget.last_within(accuracies),
            StopRule::Fraction { fraction } => ((fraction * channels as f64).round() as usize).min(channels),
            StopRule::Count { count } => count.min(channels),
        }
    }

    /// The most levels the sweep needs to evaluate.
    fn levels(&self, channels: usize) -> usize {
        match *self {
            StopRule::WithinBudget => channels,
            StopRule::Fraction { fraction } => ((fraction * channels as f64).round() as usize).min(channels),
            StopRule::Count { count } => count.min(channels),
        }
    }
}

/// What the evaluator knows about the attack (never shown to the defense's choices).
#[derive(Clone, Debug)]
pub struct KnownAttack {
    pub trigger: Triggered,
    pub target: Target,
    pub include_target: bool,
}

#[derive(Clone, Debug)]
pub struct DefenseConfig {
    pub method: Method,
    /// The clean validation accuracy every choice must keep.
    pub budget: Budget,
    /// How many channels the paper's pruning removes.
    pub stop: StopRule,
    pub layer: Option<String>,
    /// Fraction of the train split the defender has as clean data (fine-tuning, ANP's masks,
    /// FST).
    pub clean_fraction: f64,
    pub finetune: TrainConfig,
    pub anp: AnpConfig,
    pub fst: FstConfig,
    /// Remove pruned channels physically when the site allows it; otherwise (or when false)
    /// the output keeps the layer's shape with the pruned channels masked to zero.
    pub fold: bool,
    /// Measure test accuracy and attack success at every level of ANP's threshold curve
    /// (evaluation only, for reports: a pass over the test split per level). Fine-pruning's fast
    /// sweep always measures its curve.
    pub test_curve: bool,
    /// Check the repair without the trigger: scan the suspect model (reconstructed triggers),
    /// measure the reconstructed trigger before and after, and scan the output again. `unlearn`
    /// and `auto` always scan.
    pub verify: Option<crate::scan::ScanConfig>,
    /// `unlearn`: the share of the clean data stamped with the reconstructed trigger.
    pub unlearn_share: f64,
    /// `unlearn`: the most rounds of unlearning; after each but the last the trigger is
    /// searched for again, and one still found small joins the stamps (see
    /// [`verify::unlearn`]). 1: Neural Cleanse's single round.
    pub unlearn_rounds: usize,
}

/// Rounds of `unlearn` at most (see [`DefenseConfig::unlearn_rounds`]): BTI-DBF unlearns in
/// five; three keep the cumulative fine-tuning, and so the clean-accuracy cost, smaller.
pub const UNLEARN_ROUNDS: usize = 3;

impl DefenseConfig {
    /// The paper's settings (a 4% absolute validation-accuracy budget, fine-tuning with a
    /// learning rate ten times below our training default) and the published defaults of ANP
    /// and FST.
    pub fn paper(method: Method) -> DefenseConfig {
        DefenseConfig {
            method,
            budget: Budget::PAPER,
            stop: StopRule::WithinBudget,
            layer: None,
            clean_fraction: 1.0,
            finetune: TrainConfig { epochs: 5, lr: 1e-4, patience: Some(3), ..TrainConfig::default() },
            anp: AnpConfig::default(),
            fst: FstConfig::default(),
            fold: true,
            test_curve: false,
            verify: None,
            unlearn_share: 0.2,
            unlearn_rounds: UNLEARN_ROUNDS,
        }
    }

    /// The same seed for every stochastic choice of the defense.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.finetune.seed = seed;
        self.anp.seed = seed;
        self.fst.seed = seed;
        self
    }
}

/// One point of a pruning curve: fine-pruning's channels of one layer, or ANP's neurons of
/// every layer at one mask threshold.
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    pub pruned: usize,
    pub fraction: f64,
    /// ANP: neurons whose mask is at most this are pruned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub val_accuracy: f64,
    /// Clean test accuracy, and attack success on triggered test inputs: evaluation only.
    pub test_accuracy: Option<f64>,
    pub attack_success_rate: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Clean validation accuracy: what the budget is judged on.
    pub val_accuracy: f64,
    /// Clean test accuracy (evaluation only).
    pub clean_accuracy: f64,
    pub attack_success_rate: Option<f64>,
    pub attack_success_rate_ci95: Option<[f64; 2]>,
}

/// Units pruned in one layer.
#[derive(Clone, Debug, Serialize)]
pub struct PrunedLayer {
    pub layer: String,
    pub units: usize,
    pub pruned: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct DefenseOutcome {
    pub method: Method,
    /// The layer fine-pruning prunes, or a summary of the layers a neuron defense prunes.
    pub layer: String,
    pub layer_reason: String,
    /// Units the pruning considered: the site's channels, or every neuron for ANP.
    pub channels: usize,
    pub pruned_channels: usize,
    pub pruned_fraction: f64,
    /// Pruned channels of the site (fine-pruning).
    pub pruned: Vec<usize>,
    /// Pruned units per layer (every pruning method; one entry for fine-pruning).
    pub pruned_by_layer: Vec<PrunedLayer>,
    pub before: Snapshot,
    pub after: Snapshot,
    /// The output keeps clean validation accuracy within the budget of the suspect model's.
    pub within_budget: bool,
    pub budget: Budget,
    pub curve: Vec<CurvePoint>,
    pub finetune_epochs: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anp: Option<anp::AnpReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fst: Option<fst::FstReport>,
    /// The repair checked without the trigger (see [`DefenseConfig::verify`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<verify::Verification>,
    /// `auto`: every candidate defense's numbers (the output is the chosen one's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<verify::Candidate>,
    /// Whether pruned channels were removed physically (else they are masked to zero).
    pub folded: bool,
    /// Plain statements about choices made or budgets missed (also printed by the CLI).
    pub notes: Vec<String>,
    pub seconds: f64,
    pub seconds_by_stage: Vec<(String, f64)>,
    pub attack_convention: Option<String>,
    #[serde(skip)]
    pub model: ModelFile,
}

/// Clean accuracy of `model` on `split` (evaluation mode).
pub(crate) fn accuracy(model: &crate::model::Model, split: &Split, ds: &Dataset, device: &Device) -> f64 {
    let classes = model.num_classes();
    ClassReport::new(&predict(model, split, &ds.normalization, device, 256), &split.labels, classes).accuracy
}

/// Test-split numbers of a model: clean accuracy, and attack success when the attack is known.
fn snapshot(file: &ModelFile, ds: &Dataset, val_accuracy: f64, known: Option<&KnownAttack>, device: &Device, progress: &mut dyn Progress) -> Result<(Snapshot, Option<AttackEval>)> {
    match known {
        Some(k) => {
            let e = evaluate_triggered(file, &ds.test, &k.trigger, k.target, k.include_target, device, progress)?;
            let s = Snapshot { val_accuracy, clean_accuracy: e.clean.accuracy, attack_success_rate: e.attack_success_rate.rate, attack_success_rate_ci95: Some(e.attack_success_rate.ci95) };
            Ok((s, Some(e)))
        }
        None => {
            let test = std::iter::once(Ok(std::borrow::Cow::Borrowed(&ds.test)));
            let clean_accuracy = crate::attack::evaluate_chunks(file, test, ds.test.len(), None, device, progress)?.0.accuracy;
            Ok((Snapshot { val_accuracy, clean_accuracy, attack_success_rate: None, attack_success_rate_ci95: None }, None))
        }
    }
}

/// Times the stages of a defense, for the JSON output and the user.
struct Stopwatch {
    last: Instant,
    stages: Vec<(String, f64)>,
}

impl Stopwatch {
    fn new() -> Self {
        Stopwatch { last: Instant::now(), stages: vec![] }
    }

    fn lap(&mut self, stage: &str) {
        let now = Instant::now();
        self.stages.push((stage.to_string(), (now - self.last).as_secs_f64()));
        self.last = now;
    }
}

/// What the pruning part of a defense produced: the masked model and its bookkeeping.
struct Pruned {
    model: crate::model::Model,
    layer: String,
    layer_reason: String,
    units: usize,
    /// Site channels (fine-pruning only).
    site_pruned: Vec<usize>,
    by_layer: Vec<PrunedLayer>,
    curve: Vec<CurvePoint>,
    /// The suspect model's test numbers, when the pruning sweep measured them at level 0.
    before: Option<(Snapshot, Option<String>)>,
    anp: Option<anp::AnpReport>,
}

/// The stage of [`DefenseOutcome::seconds_by_stage`] that checks the repair without the trigger.
pub const VERIFICATION_STAGE: &str = "verification scans";

/// Runs a defense on `file` with the clean data of `ds`. `device` must be an autodiff device.
pub fn defend(file: &ModelFile, ds: &Dataset, cfg: &DefenseConfig, known: Option<&KnownAttack>, device: &Device, progress: &mut dyn Progress) -> Result<DefenseOutcome> {
    if cfg.method == Method::Auto {
        return verify::auto(file, ds, cfg, known, device, progress);
    }
    // Unlearning needs the reconstructed trigger first; a plain verification scans the suspect
    // after the defense, so the defense's own errors come before a long scan.
    let suspect_scan = match cfg.method {
        Method::Unlearn => Some(verify::scan_suspect(file, ds, &verify::scan_config(cfg), device, progress)?),
        _ => None,
    };
    defend_scanned(file, ds, cfg, known, suspect_scan.as_ref(), device, progress)
}

/// [`defend`] with the suspect model's scan already made (`auto` scans it once for all).
pub(crate) fn defend_scanned(file: &ModelFile, ds: &Dataset, cfg: &DefenseConfig, known: Option<&KnownAttack>, suspect_scan: Option<&verify::SuspectScan>, device: &Device, progress: &mut dyn Progress) -> Result<DefenseOutcome> {
    let start = Instant::now();
    let mut clock = Stopwatch::new();
    cfg.budget.validate()?;
    if ds.val.is_empty() {
        return Err(Error::invalid("the defender needs clean validation data; the validation split is empty"));
    }
    let eval_device = device.clone().without_autodiff();
    let mut notes = vec![];
    let mut model = file.model.clone();

    let pruned = if cfg.method.prunes_site() {
        Some(paper::prune_site(file, ds, cfg, known, &eval_device, progress, &mut clock)?)
    } else if cfg.method.uses_anp() {
        Some(anp::prune(file, ds, cfg, known, device, progress, &mut clock, &mut notes)?)
    } else {
        None
    };
    let val_before = match &pruned {
        Some(p) => p.curve.first().map(|c| c.val_accuracy).expect("a curve starts at the unpruned model"),
        None => accuracy(&model, &ds.val, ds, &eval_device),
    };
    if let Some(p) = &pruned {
        model = p.model.clone();
    }

    let mut finetune_epochs = 0;
    let mut fst_report = None;
    if matches!(cfg.method, Method::Finetune | Method::Fineprune) {
        let (m, epochs) = paper::finetune(model, ds, cfg, device, progress)?;
        model = m;
        finetune_epochs = epochs;
        clock.lap("fine-tuning");
    }
    if cfg.method == Method::Unlearn {
        let s = suspect_scan.expect("unlearn scans first");
        let (m, epochs) = verify::unlearn(file, model, ds, cfg, s, device, progress)?;
        model = m;
        finetune_epochs = epochs;
        clock.lap("unlearning");
    }
    if cfg.method.uses_fst() {
        let (m, report) = fst::tune(model, ds, cfg, val_before, device, progress, &mut notes)?;
        model = m;
        finetune_epochs = report.epochs_run;
        fst_report = Some(report);
        clock.lap("feature-shift tuning");
    }

    let mut folded = false;
    if cfg.fold && pruned.as_ref().is_some_and(|p| !p.by_layer.iter().all(|l| l.pruned.is_empty())) {
        let before = model.graph.param_count();
        let (m, stuck) = crate::prune::fold::fold_all(&model.valid());
        folded = m.graph.param_count() < before;
        model = m;
        for site in stuck {
            notes.push(format!("the pruned units at {site} could not be removed (the layer is not reached from one convolution through per-channel layers); they stay in the output, masked to zero"));
        }
    }
    let model = model.valid();
    progress.phase("evaluating the defended model on the validation split", 0);
    let val_after = accuracy(&model, &ds.val, ds, &eval_device);
    let within_budget = cfg.budget.allows(val_before, val_after);
    if !within_budget {
        notes.push(format!(
            "{}: no setting kept clean validation accuracy within the budget ({:.4} -> {:.4}, a drop of {:.1} points; the budget is {}); the output is not a repaired model",
            cfg.method,
            val_before,
            val_after,
            100.0 * (val_before - val_after),
            describe_budget(&cfg.budget),
        ));
    }

    let mut info = file.info.clone();
    let (pruned_count, units) = pruned.as_ref().map_or((0, 0), |p| (p.by_layer.iter().map(|l| l.pruned.len()).sum(), p.units));
    info.extra.insert(
        "defense".into(),
        serde_json::json!({
            "method": cfg.method,
            "layer": pruned.as_ref().map(|p| p.layer.clone()),
            "pruned": pruned.as_ref().map(|p| &p.by_layer),
            "stop": cfg.stop,
            "budget": cfg.budget,
            "within_budget": within_budget,
            "clean_fraction": cfg.clean_fraction,
        }),
    );
    let out_file = ModelFile { model, info };
    let (before, attack_convention) = match pruned.as_ref().and_then(|p| p.before.clone()) {
        Some(b) => b,
        None => {
            progress.phase("evaluating the suspect model on the test split", 1);
            let (snap, eval) = snapshot(file, ds, val_before, known, &eval_device, progress)?;
            (snap, eval.map(|e| e.attack_success_rate.convention))
        }
    };
    progress.phase("evaluating the defended model on the test split", 1);
    let (after, _) = snapshot(&out_file, ds, val_after, known, &eval_device, progress)?;
    clock.lap("evaluation");
    let verification = if cfg.verify.is_some() || cfg.method == Method::Unlearn {
        let checked = match suspect_scan {
            Some(s) => verify::verify(s, &out_file, ds, device, progress),
            None => verify::scan_suspect(file, ds, &verify::scan_config(cfg), device, progress).and_then(|s| verify::verify(&s, &out_file, ds, device, progress)),
        };
        clock.lap(VERIFICATION_STAGE);
        match checked {
            Ok(v) => Some(v),
            Err(e) => {
                notes.push(format!("the repair could not be checked without the trigger: {e}"));
                None
            }
        }
    } else {
        None
    };
    let (layer, layer_reason, site_pruned, by_layer, curve, anp_report) = match pruned {
        Some(p) => (p.layer, p.layer_reason, p.site_pruned, p.by_layer, p.curve, p.anp),
        None => ("(all weights)".into(), "fine-tuning changes every layer".into(), vec![], vec![], vec![], None),
    };
    Ok(DefenseOutcome {
        method: cfg.method,
        layer,
        layer_reason,
        channels: units,
        pruned_channels: pruned_count,
        pruned_fraction: if units > 0 { pruned_count as f64 / units as f64 } else { 0.0 },
        pruned: site_pruned,
        pruned_by_layer: by_layer,
        before,
        after,
        within_budget,
        budget: cfg.budget,
        curve,
        finetune_epochs,
        anp: anp_report,
        fst: fst_report,
        verification,
        candidates: vec![],
        folded,
        notes,
        seconds: start.elapsed().as_secs_f64(),
        seconds_by_stage: clock.stages,
        attack_convention,
        model: out_file,
    })
}

fn describe_budget(b: &Budget) -> String {
    if b.relative { format!("{:.1}% of it", 100.0 * b.drop) } else { format!("{:.1} points", 100.0 * b.drop) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_rule_keeps_the_last_state_within_the_budget() {
        let accs = [0.90, 0.90, 0.89, 0.86, 0.85, 0.70];
        let paper = Budget::PAPER;
        // 0.90 - 0.86 = 0.04 is within (at the edge); 0.85 is not.
        assert_eq!(StopRule::WithinBudget.choose(&accs, &paper), 3);
        assert_eq!(StopRule::WithinBudget.choose(&accs, &Budget { drop: 0.039, relative: false }), 2);
        // Relative: 0.05 / 0.90 = 5.6% > 5%, 0.04 / 0.90 = 4.4% within.
        assert_eq!(StopRule::WithinBudget.choose(&accs, &Budget { drop: 0.05, relative: true }), 3);
        // Never exceeded: everything may go.
        assert_eq!(StopRule::WithinBudget.choose(&accs, &Budget { drop: 1.0, relative: false }), 5);
        // An immediate drop prunes nothing.
        assert_eq!(StopRule::WithinBudget.choose(&[0.9, 0.5, 0.4], &paper), 0);
        assert_eq!(StopRule::Fraction { fraction: 0.4 }.choose(&accs, &paper), 2);
        assert_eq!(StopRule::Count { count: 4 }.choose(&accs, &paper), 4);
        assert!(Budget { drop: 1.5, relative: false }.validate().is_err());
        assert!(Budget { drop: -0.1, relative: false }.validate().is_err());
        assert!(StopRule::Count { count: 6 }.validate(5).is_err());
        assert!(paper.allows(0.9, 0.86) && !paper.allows(0.9, 0.85));
    }
}
