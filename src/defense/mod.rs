//! The paper's three defenses: pruning, fine-tuning and fine-pruning.
//!
//! The defender has the suspect model and a little clean data; it does not know the trigger.
//! Every choice (which channels, how many, which fine-tuning epoch) is made on clean
//! *validation* data. When a trigger is known to the evaluator it is used only to measure
//! attack success before and after, and along the pruning curve, never to steer.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use crate::attack::{AttackEval, evaluate_attack};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::metrics::{ClassReport, attack_success};
use crate::model::ModelFile;
use crate::prune::sweep::sweep_predictions;
use crate::prune::{self, PrefixCache, Site};
use crate::rng::Rng;
use crate::train::{Progress, TrainConfig, TrainData, train};
use crate::trigger::poison::Target;
use crate::trigger::{Trigger, Use};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Prune,
    Finetune,
    Fineprune,
}

/// How many channels to prune.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "rule")]
pub enum StopRule {
    /// Prune one channel at a time until clean validation accuracy drops by more than `drop`
    /// (absolute points, or relative to the unpruned accuracy), then keep the last state
    /// within the tolerance.
    MaxAccDrop { drop: f64, relative: bool },
    Fraction { fraction: f64 },
    Count { count: usize },
}

impl StopRule {
    pub fn validate(&self, channels: usize) -> Result<()> {
        match *self {
            StopRule::MaxAccDrop { drop, .. } if !(0.0..=1.0).contains(&drop) => Err(Error::invalid(format!("tolerance {drop} is not in [0, 1]"))),
            StopRule::Fraction { fraction } if !(0.0..=1.0).contains(&fraction) => Err(Error::invalid(format!("prune fraction {fraction} is not in [0, 1]"))),
            StopRule::Count { count } if count > channels => Err(Error::invalid(format!("cannot prune {count} of {channels} channels"))),
            _ => Ok(()),
        }
    }

    /// The number of channels to prune, given validation accuracy at every level
    /// (`accuracies[k]` after pruning k channels).
    pub fn choose(&self, accuracies: &[f64]) -> usize {
        let channels = accuracies.len() - 1;
        match *self {
            StopRule::MaxAccDrop { drop, relative } => {
                let base = accuracies[0];
                let lost = |a: f64| if relative { (base - a) / base.max(f64::MIN_POSITIVE) } else { base - a };
                // Small slack so a drop exactly at the tolerance counts as within it.
                let within = |a: f64| lost(a) <= drop + 1e-12;
                accuracies.iter().position(|&a| !within(a)).map_or(channels, |k| k - 1)
            }
            StopRule::Fraction { fraction } => ((fraction * channels as f64).round() as usize).min(channels),
            StopRule::Count { count } => count.min(channels),
        }
    }

    /// The most levels the sweep needs to evaluate.
    fn levels(&self, channels: usize) -> usize {
        match *self {
            StopRule::MaxAccDrop { .. } => channels,
            StopRule::Fraction { fraction } => ((fraction * channels as f64).round() as usize).min(channels),
            StopRule::Count { count } => count.min(channels),
        }
    }
}

/// What the evaluator knows about the attack (never shown to the defense's choices).
#[derive(Clone, Debug)]
pub struct KnownAttack {
    pub trigger: Trigger,
    pub target: Target,
    pub include_target: bool,
}

#[derive(Clone, Debug)]
pub struct DefenseConfig {
    pub method: Method,
    pub stop: StopRule,
    pub layer: Option<String>,
    /// Fraction of the train split the defender has as clean data for fine-tuning.
    pub clean_fraction: f64,
    pub finetune: TrainConfig,
    /// Remove pruned channels physically when the site allows it; otherwise (or when false)
    /// the output keeps the layer's shape with the pruned channels masked to zero.
    pub fold: bool,
}

impl DefenseConfig {
    /// The paper's settings: a 4% absolute validation-accuracy drop, fine-tuning with a learning
    /// rate ten times below our training default.
    pub fn paper(method: Method) -> DefenseConfig {
        DefenseConfig {
            method,
            stop: StopRule::MaxAccDrop { drop: 0.04, relative: false },
            layer: None,
            clean_fraction: 1.0,
            finetune: TrainConfig { epochs: 5, lr: 1e-4, patience: Some(3), ..TrainConfig::default() },
            fold: true,
        }
    }
}

/// One point of the pruning curve.
#[derive(Clone, Debug, Serialize)]
pub struct CurvePoint {
    pub pruned: usize,
    pub fraction: f64,
    pub val_accuracy: f64,
    /// Clean test accuracy, and attack success on triggered test inputs: evaluation only.
    pub test_accuracy: Option<f64>,
    pub attack_success_rate: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub clean_accuracy: f64,
    pub attack_success_rate: Option<f64>,
    pub attack_success_rate_ci95: Option<[f64; 2]>,
}

#[derive(Debug, Serialize)]
pub struct DefenseOutcome {
    pub method: Method,
    pub layer: String,
    pub layer_reason: String,
    pub channels: usize,
    pub pruned_channels: usize,
    pub pruned_fraction: f64,
    pub pruned: Vec<usize>,
    pub before: Snapshot,
    pub after: Snapshot,
    pub curve: Vec<CurvePoint>,
    pub finetune_epochs: usize,
    /// Whether the pruned channels were removed physically (else they are masked to zero).
    pub folded: bool,
    pub seconds: f64,
    pub attack_convention: Option<String>,
    #[serde(skip)]
    pub model: ModelFile,
}

fn snapshot(file: &ModelFile, test: &Split, known: Option<&KnownAttack>, device: &Device) -> Result<(Snapshot, Option<AttackEval>)> {
    match known {
        Some(k) => {
            let e = evaluate_attack(file, test, &k.trigger, k.target, k.include_target, device)?;
            Ok((Snapshot { clean_accuracy: e.clean.accuracy, attack_success_rate: Some(e.attack_success_rate.rate), attack_success_rate_ci95: Some(e.attack_success_rate.ci95) }, Some(e)))
        }
        None => Ok((Snapshot { clean_accuracy: crate::metrics::evaluate(file, test, device)?.accuracy, attack_success_rate: None, attack_success_rate_ci95: None }, None)),
    }
}

/// The defender's clean training data: a seeded `fraction` of the train split.
pub fn defender_split(train: &Split, fraction: f64, seed: u64) -> Result<Split> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::invalid(format!("clean fraction {fraction} is not in (0, 1]")));
    }
    let n = ((fraction * train.len() as f64).round() as usize).max(1).min(train.len());
    let mut idx: Vec<usize> = (0..train.len()).collect();
    Rng::new(seed ^ 0xDEF3).shuffle(&mut idx);
    idx.truncate(n);
    idx.sort_unstable();
    Ok(train.subset(&idx))
}

/// Runs a defense on `file` with the clean data of `ds`.
pub fn defend(file: &ModelFile, ds: &Dataset, cfg: &DefenseConfig, known: Option<&KnownAttack>, device: &Device, progress: &mut dyn Progress) -> Result<DefenseOutcome> {
    let start = Instant::now();
    if ds.val.is_empty() {
        return Err(Error::invalid("the defender needs clean validation data; the validation split is empty"));
    }
    let eval_device = device.clone().without_autodiff();
    let classes = file.info.classes.len();
    let site: Site = prune::find_site(&file.model, cfg.layer.as_deref())?;
    cfg.stop.validate(site.channels)?;
    let mut model = file.model.clone();
    let (mut pruned, mut curve) = (vec![], vec![]);
    // The unpruned model's test numbers: level 0 of the sweep when pruning (no second pass over
    // the test split), a direct evaluation otherwise.
    let mut before: Option<(Snapshot, Option<String>)> = None;

    if cfg.method != Method::Finetune {
        let means = prune::channel_means(&model, &ds.val, &ds.normalization, site.index, &eval_device, 256)?;
        let order = prune::ranking(&means);
        let levels = cfg.stop.levels(site.channels);
        let val_cache = PrefixCache::build(&model, &ds.val, &ds.normalization, site.index, &eval_device, 256);
        let val_levels = sweep_predictions(&model, &val_cache, site.index, site.channels, &order, levels);
        let val_acc: Vec<f64> = val_levels.iter().map(|p| ClassReport::new(p, &val_cache.labels, classes).accuracy).collect();
        // Evaluation-only curves on the test split.
        let test_cache = PrefixCache::build(&model, &ds.test, &ds.normalization, site.index, &eval_device, 256);
        let test_levels = sweep_predictions(&model, &test_cache, site.index, site.channels, &order, levels);
        let test_acc: Vec<f64> = test_levels.iter().map(|p| ClassReport::new(p, &test_cache.labels, classes).accuracy).collect();
        let asr: Option<Vec<crate::metrics::AttackSuccess>> = match known {
            Some(k) => {
                let triggered = k.trigger.apply_split(&ds.test, None, ds.shape, Use::Test, 1)?;
                let cache = PrefixCache::build(&model, &triggered, &ds.normalization, site.index, &eval_device, 256);
                let levels = sweep_predictions(&model, &cache, site.index, site.channels, &order, levels);
                Some(levels.iter().zip(&test_acc).map(|(p, &clean)| attack_success(p, &ds.test.labels, k.target, classes, k.include_target, clean)).collect())
            }
            None => None,
        };
        let a0 = asr.as_ref().map(|a| a[0].clone());
        before = Some((
            Snapshot { clean_accuracy: test_acc[0], attack_success_rate: a0.as_ref().map(|a| a.rate), attack_success_rate_ci95: a0.as_ref().map(|a| a.ci95) },
            a0.map(|a| a.convention),
        ));
        let k = cfg.stop.choose(&val_acc);
        curve = (0..val_acc.len())
            .map(|j| CurvePoint {
                pruned: j,
                fraction: j as f64 / site.channels as f64,
                val_accuracy: val_acc[j],
                test_accuracy: Some(test_acc[j]),
                attack_success_rate: asr.as_ref().map(|a| a[j].rate),
            })
            .collect();
        pruned = order[..k].to_vec();
        model = prune::with_mask(&model, site.index, &prune::keep_mask(site.channels, &order, k));
    }

    let (before, attack_convention) = match before {
        Some(b) => b,
        None => {
            let (snap, eval) = snapshot(file, &ds.test, known, &eval_device)?;
            (snap, eval.map(|e| e.attack_success_rate.convention))
        }
    };
    let mut finetune_epochs = 0;
    if cfg.method != Method::Prune {
        let clean_train = defender_split(&ds.train, cfg.clean_fraction, cfg.finetune.seed)?;
        let data = TrainData { train: &clean_train, val: &ds.val, normalization: &ds.normalization };
        // Masks are graph ops without parameters: pruned channels stay exactly zero.
        let outcome = train(model.train(), &data, &cfg.finetune, device, progress)?;
        finetune_epochs = outcome.history.len();
        model = outcome.model;
    }
    let mut folded = false;
    if cfg.fold && !pruned.is_empty()
        && let Some(m) = prune::fold::fold(&model.valid(), site.index)
    {
        model = m;
        folded = true;
    }
    let mut info = file.info.clone();
    info.extra.insert(
        "defense".into(),
        serde_json::json!({"method": cfg.method, "layer": site.name, "pruned": pruned, "stop": cfg.stop, "clean_fraction": cfg.clean_fraction}),
    );
    let out_file = ModelFile { model: model.valid(), info };
    let (after, _) = snapshot(&out_file, &ds.test, known, &eval_device)?;
    Ok(DefenseOutcome {
        method: cfg.method,
        layer: site.name,
        layer_reason: site.reason,
        channels: site.channels,
        pruned_channels: pruned.len(),
        pruned_fraction: pruned.len() as f64 / site.channels as f64,
        pruned,
        before,
        after,
        curve,
        finetune_epochs,
        folded,
        seconds: start.elapsed().as_secs_f64(),
        attack_convention,
        model: out_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_rule_keeps_the_last_state_within_tolerance() {
        let accs = [0.90, 0.90, 0.89, 0.86, 0.85, 0.70];
        let rule = StopRule::MaxAccDrop { drop: 0.04, relative: false };
        // 0.90 - 0.86 = 0.04 is within (at the edge); 0.85 is not.
        assert_eq!(rule.choose(&accs), 3);
        assert_eq!(StopRule::MaxAccDrop { drop: 0.039, relative: false }.choose(&accs), 2);
        // Relative: 0.05 / 0.90 = 5.6% > 5%, 0.04 / 0.90 = 4.4% within.
        assert_eq!(StopRule::MaxAccDrop { drop: 0.05, relative: true }.choose(&accs), 3);
        // Never exceeded: everything may go.
        assert_eq!(StopRule::MaxAccDrop { drop: 1.0, relative: false }.choose(&accs), 5);
        // An immediate drop prunes nothing.
        assert_eq!(rule.choose(&[0.9, 0.5, 0.4]), 0);
        assert_eq!(StopRule::Fraction { fraction: 0.4 }.choose(&accs), 2);
        assert_eq!(StopRule::Count { count: 4 }.choose(&accs), 4);
        assert!(StopRule::MaxAccDrop { drop: 1.5, relative: false }.validate(5).is_err());
        assert!(StopRule::MaxAccDrop { drop: -0.1, relative: false }.validate(5).is_err());
        assert!(StopRule::Count { count: 6 }.validate(5).is_err());
    }
}
