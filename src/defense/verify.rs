//! Repairs checked without the trigger, and the defenses that need a reconstructed one.
//!
//! - *Verification*: the suspect model is scanned ([`crate::scan`]); after a defense, the most
//!   likely target's reconstructed trigger is measured again on the output (fixed-trigger
//!   attack success), the output is scanned afresh — a new inversion, not a replay — and the
//!   suspect's trigger is re-inverted on the output, starting from where it was
//!   ([`crate::scan::recheck`]): a small trigger found again there means the backdoor is
//!   still in place, even when the replayed one no longer works. Each answers "is it still
//!   flagged?".
//! - *Unlearn* (Neural Cleanse's mitigation): fine-tune on the defender's clean data with a
//!   share of it stamped with the reconstructed trigger at its true label.
//! - *Auto*: every defense, cheapest first, on the same suspect scan; outputs outside the
//!   clean-accuracy budget are dropped; among the rest the one not flagged again whose old
//!   trigger is hardest to re-invert is kept (then: the lower replayed attack success, the
//!   higher validation accuracy). Only clean data and reconstructed triggers steer the choice;
//!   a known trigger is only measured.

use burn::module::Module;
use burn::tensor::Device;
use serde::Serialize;

use super::{DefenseConfig, DefenseOutcome, KnownAttack, Method, defend_scanned, defender_split};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Model, ModelFile};
use crate::rng::Rng;
use crate::scan::{Family, Recheck, ScanConfig, ScanOutcome, Verdict, holdout_success, recheck, reinvert_alone, reinverted_ratio, scan};
use crate::train::{TrainData, train};
use crate::progress::Progress;
use crate::trigger::Use;

/// The suspect model's scan, with the configuration that re-scans a repaired model.
pub struct SuspectScan {
    pub outcome: ScanOutcome,
    pub config: ScanConfig,
    /// Attack success of the best reconstructed trigger on the suspect model, on the
    /// validation inputs of other classes (what the repaired model is measured on too); for an
    /// untargeted trigger, the share of validation inputs it sends to another class.
    pub reconstructed_asr: Option<f64>,
}

/// The scan a defense verifies with: `cfg.verify`, else the defaults on the defense's clean
/// data and seed.
pub fn scan_config(cfg: &DefenseConfig) -> ScanConfig {
    cfg.verify.clone().unwrap_or(ScanConfig { clean_fraction: cfg.clean_fraction, seed: cfg.finetune.seed, ..ScanConfig::default() })
}

pub fn scan_suspect(file: &ModelFile, ds: &Dataset, cfg: &ScanConfig, device: &Device, progress: &mut dyn Progress) -> Result<SuspectScan> {
    let outcome = scan(file, ds, cfg, &device.clone().without_autodiff(), progress)?;
    SuspectScan::new(outcome, cfg, file, ds, device)
}

impl SuspectScan {
    /// `outcome`, a scan of `file` made with `cfg`, as the suspect scan repairs are checked
    /// against.
    pub fn new(outcome: ScanOutcome, cfg: &ScanConfig, file: &ModelFile, ds: &Dataset, device: &Device) -> Result<Self> {
        let eval = device.clone().without_autodiff();
        let reconstructed_asr = match outcome.best_trigger() {
            Some((target, _, t)) => holdout_success(file, &ds.val, t, target, file.model.graph.input_shape, &eval)?.holdout_asr,
            None => None,
        };
        Ok(SuspectScan { outcome, config: cfg.clone(), reconstructed_asr })
    }
}

/// What the check without the trigger can say about a repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepairStatus {
    /// The backdoor is still there: the output is called backdoored, its old target (or the
    /// untargeted evidence) is suspected again, or the old trigger is found again small.
    StillFlagged,
    /// Not flagged, and not shown gone either: the fresh scan is inconclusive, or the old
    /// trigger is found again smaller than on clean models (below
    /// [`crate::scan::Thresholds::removed_ratio`]). Repairs that a check with only the other
    /// two answers passed while the real trigger still worked were of this kind.
    Unverified,
    /// The fresh scan finds nothing and the old trigger is as hard to find as on clean models.
    NoEvidence,
}

impl RepairStatus {
    pub fn name(self) -> &'static str {
        match self {
            RepairStatus::StillFlagged => "still-flagged",
            RepairStatus::Unverified => "unverified",
            RepairStatus::NoEvidence => "no-evidence",
        }
    }
}

/// A repair, checked without the trigger.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    pub before_verdict: Verdict,
    pub before_targets: Vec<usize>,
    /// The most likely target and the family of its reconstructed trigger (none when the
    /// suspect scan suspected no class).
    pub target: Option<usize>,
    pub family: Option<Family>,
    /// The trigger checked is the untargeted one (no target class: its success is the share
    /// of inputs sent to another class).
    pub untargeted: bool,
    /// That trigger's attack success on the validation inputs of other classes, before and
    /// after the defense.
    pub reconstructed_asr_before: Option<f64>,
    pub reconstructed_asr_after: Option<f64>,
    /// A fresh scan of the output.
    pub after_verdict: Verdict,
    pub after_targets: Vec<usize>,
    /// The suspect's trigger searched for again on the output from where it was, against the
    /// fresh scan (see [`recheck`]); none when the suspect scan suspected nothing.
    #[serde(flatten)]
    pub recheck: Option<Recheck>,
    /// The check's answer in one word (see [`RepairStatus`]).
    pub status: RepairStatus,
    pub seconds_before_scan: f64,
    pub seconds_after_scan: f64,
}

pub fn verify(s: &SuspectScan, repaired: &ModelFile, ds: &Dataset, device: &Device, progress: &mut dyn Progress) -> Result<Verification> {
    let eval = device.clone().without_autodiff();
    let best = s.outcome.best_trigger();
    let after_asr = match best {
        Some((target, _, t)) => holdout_success(repaired, &ds.val, t, target, repaired.model.graph.input_shape, &eval)?.holdout_asr,
        None => None,
    };
    let (after, recheck) = match best {
        Some((target, _, t)) => {
            let (after, r) = recheck(repaired, ds, &s.config, t, target, &eval, progress)?;
            (after, Some(r))
        }
        None => (scan(repaired, ds, &s.config, &eval, progress)?, None),
    };
    let target = best.and_then(|b| b.0);
    let untargeted = best.is_some_and(|b| b.0.is_none());
    // Still backdoored, the old target (or the untargeted evidence) still suspected, or a small
    // trigger found again near the old one.
    let still_flagged = after.verdict == Verdict::Backdoored || target.is_some_and(|t| after.targets.contains(&t)) || (untargeted && after.untargeted.is_some()) || recheck.as_ref().is_some_and(|r| r.reinverted_flagged);
    let status = if still_flagged {
        RepairStatus::StillFlagged
    } else if after.verdict == Verdict::Inconclusive || recheck.as_ref().is_some_and(|r| !r.reinverted_removed) {
        RepairStatus::Unverified
    } else {
        RepairStatus::NoEvidence
    };
    Ok(Verification {
        before_verdict: s.outcome.verdict,
        before_targets: s.outcome.targets.clone(),
        target,
        family: best.map(|b| b.1),
        untargeted,
        reconstructed_asr_before: s.reconstructed_asr,
        reconstructed_asr_after: after_asr,
        after_verdict: after.verdict,
        after_targets: after.targets,
        recheck,
        status,
        seconds_before_scan: s.outcome.seconds,
        seconds_after_scan: after.seconds,
    })
}

/// The check's answer on a defense's outcome; still flagged when it was not checked.
fn status_of(o: &DefenseOutcome) -> RepairStatus {
    o.verification.as_ref().map_or(RepairStatus::StillFlagged, |v| v.status)
}

/// How hard the suspect's trigger is to find again on a repair: the re-inverted size over the
/// fresh scan's reference, capped at 1 (once the old target takes as large a trigger as an
/// ordinary class, a larger one is no better repair, and validation accuracy decides); a
/// trigger never re-found counts as 1, no re-inversion as 0.
///
/// Ranked by this rather than by the replayed trigger's attack success: unlearning trains on
/// exactly the replayed trigger, so its replay comes out low while the real trigger may still
/// work (measured on a pruning-aware GTSRB sticker, 5% clean data: unlearn replay 0.20,
/// re-inverted 0.30x, real 0.83; FST replay 0.32, 0.42x, real 0.63; fine-pruning replay 0.98,
/// 0.15x, real 1.00).
fn hardness(v: &Verification) -> f64 {
    match &v.recheck {
        Some(r) if r.reinversion.size.is_none() => 1.0,
        Some(r) => r.reinverted_ratio.map_or(0.0, |q| q.min(1.0)),
        None => 0.0,
    }
}

/// Neural Cleanse's unlearning: the clean data with `cfg.unlearn_share` of it stamped with the
/// reconstructed trigger (labels unchanged), fine-tuned as fine-tuning is; the epoch is chosen
/// on clean validation accuracy. Then, for up to `cfg.unlearn_rounds` rounds in all (after
/// BTI-DBF's unlearning): the suspect's trigger is searched for again on the unlearned model
/// from where it was (as the final check does); while the trigger found is still smaller than a
/// median class's (below the scan's `removed_ratio`, measured against the suspect scan's
/// reference) it joins the stamps, and the model is unlearned again. A model that learned to
/// ignore one reconstruction while a trigger near it (such as the real one) still works is then
/// taught that one too. Every choice here is made on clean data and reconstructed triggers.
pub(super) fn unlearn(file: &ModelFile, model: Model, ds: &Dataset, cfg: &DefenseConfig, s: &SuspectScan, device: &Device, progress: &mut dyn Progress) -> Result<(Model, usize)> {
    let Some((target, family, trigger)) = s.outcome.best_trigger() else {
        return Err(Error::invalid(format!(
            "unlearn needs a reconstructed trigger, and the scan suspected no class (verdict {}); nothing to unlearn",
            s.outcome.verdict.name()
        )));
    };
    if !(0.0..=1.0).contains(&cfg.unlearn_share) {
        return Err(Error::invalid(format!("the unlearning share {} is not in [0, 1]", cfg.unlearn_share)));
    }
    let base = defender_split(&ds.train, cfg.clean_fraction, cfg.finetune.seed)?;
    let mut idx: Vec<usize> = (0..base.len()).collect();
    let mut rng = Rng::new(cfg.finetune.seed ^ 0x0C1E);
    rng.shuffle(&mut idx);
    idx.truncate((cfg.unlearn_share * base.len() as f64).round() as usize);
    let goal = target.map_or("the untargeted goal".to_string(), |t| format!("class {t}"));
    let rounds = cfg.unlearn_rounds.max(1);
    let removed = s.config.thresholds.removed_ratio;
    let mut stamps = vec![trigger.clone()];
    let (mut model, mut epochs) = (model, 0);
    for round in 1..=rounds {
        // The stamped samples take the triggers in turn: each is unlearned on a share of them.
        let mut clean = base.clone();
        let stampers = stamps.iter().map(|t| t.stamper(model.graph.input_shape)).collect::<Result<Vec<_>>>()?;
        for (j, &i) in idx.iter().enumerate() {
            stampers[j % stampers.len()].apply_sample(&mut clean, i, Use::Test, &mut rng)?;
        }
        progress.note(&format!(
            "unlearn round {round} of at most {rounds}: {} of {} clean samples stamped with {} reconstructed {} trigger(s) of {goal}, at their true labels",
            idx.len(),
            clean.len(),
            stamps.len(),
            family.name()
        ));
        let data = TrainData { train: &clean, val: &ds.val, normalization: &ds.normalization };
        let outcome = train(model.train(), &data, &cfg.finetune, device, progress)?;
        model = outcome.model;
        epochs += outcome.history.len();
        if round == rounds {
            break;
        }
        let unlearned = ModelFile { model: model.valid(), info: file.info.clone() };
        // From the suspect's trigger, where the final check starts too: the triggers to remove
        // are the ones near it.
        let again = reinvert_alone(&unlearned, ds, &s.config, trigger, target, device, progress)?;
        let reference = if target.is_some() { "the suspect's median class" } else { "the suspect's smallest class" };
        match (reinverted_ratio(&s.outcome, &again), again.trigger) {
            (Some(ratio), Some(found)) if ratio < removed => {
                progress.note(&format!("unlearn round {round}: the trigger is found again at {ratio:.2}x {reference} (below {removed:.2}x): unlearning it too"));
                stamps.push(found);
            }
            (ratio, _) => {
                progress.note(&format!(
                    "unlearn round {round}: the trigger is found again only {} (as on a clean model): done",
                    ratio.map_or("never".to_string(), |q| format!("at {q:.2}x {reference}"))
                ));
                break;
            }
        }
    }
    Ok((model, epochs))
}

/// One defense `auto` tried.
#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    pub method: Method,
    pub within_budget: bool,
    pub val_accuracy: f64,
    pub reconstructed_asr_after: Option<f64>,
    /// The re-inverted trigger's size over the fresh scan's reference (see
    /// [`Recheck::reinverted_ratio`]).
    pub reinverted_ratio: Option<f64>,
    /// The check's answer (see [`RepairStatus`]); still flagged when the check did not run.
    pub status: RepairStatus,
    /// Attack success of a known trigger (evaluation only; never used to choose).
    pub attack_success_rate: Option<f64>,
    pub seconds: f64,
    pub chosen: bool,
    /// Why a candidate failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The defenses `auto` tries, cheapest first.
pub const AUTO_METHODS: [Method; 4] = [Method::Fineprune, Method::Anp, Method::Fst, Method::Unlearn];

pub(super) fn auto(file: &ModelFile, ds: &Dataset, cfg: &DefenseConfig, known: Option<&KnownAttack>, device: &Device, progress: &mut dyn Progress) -> Result<DefenseOutcome> {
    let start = std::time::Instant::now();
    let scan_cfg = scan_config(cfg);
    let suspect = scan_suspect(file, ds, &scan_cfg, device, progress)?;
    let mut tried = vec![];
    for method in AUTO_METHODS {
        progress.note(&format!("auto: trying {method}"));
        tried.push((method, defend_scanned(file, ds, &candidate_config(cfg, method, &scan_cfg), known, Some(&suspect), device, progress)));
    }
    let (mut chosen, mut notes, candidates) = choose(&suspect, tried)?;
    notes.append(&mut chosen.notes);
    chosen.notes = notes;
    chosen.candidates = candidates;
    // The whole run (the suspect scan and every candidate), not only the kept one's time, which
    // stays in its candidate row.
    chosen.seconds = start.elapsed().as_secs_f64();
    Ok(chosen)
}

/// The configuration `auto` runs `method` with: `cfg`'s, verified by `scan`.
pub fn candidate_config(cfg: &DefenseConfig, method: Method, scan: &ScanConfig) -> DefenseConfig {
    DefenseConfig { method, verify: Some(scan.clone()), ..cfg.clone() }
}

/// `auto`'s choice among defenses already run on `suspect`'s model with verification (see
/// [`candidate_config`]): the kept outcome, `auto`'s notes, and every candidate's numbers.
/// A caller that has run the candidates anyway (the attack matrix) chooses without running
/// them again.
pub fn choose(suspect: &SuspectScan, tried: Vec<(Method, Result<DefenseOutcome>)>) -> Result<(DefenseOutcome, Vec<String>, Vec<Candidate>)> {
    let mut notes = vec![];
    if suspect.outcome.verdict == Verdict::NoEvidence {
        notes.push("auto: the scan found no evidence of a backdoor; the defenses were still run, and are compared on clean accuracy and fresh scans".to_string());
    }
    let mut outcomes: Vec<DefenseOutcome> = vec![];
    let mut candidates = vec![];
    for (method, result) in tried {
        match result {
            Ok(o) => {
                let v = o.verification.as_ref();
                candidates.push(Candidate {
                    method,
                    within_budget: o.within_budget,
                    val_accuracy: o.after.val_accuracy,
                    reconstructed_asr_after: v.and_then(|v| v.reconstructed_asr_after),
                    reinverted_ratio: v.and_then(|v| v.recheck.as_ref()?.reinverted_ratio),
                    status: status_of(&o),
                    attack_success_rate: o.after.attack_success_rate,
                    seconds: o.seconds,
                    chosen: false,
                    error: None,
                });
                outcomes.push(o);
            }
            Err(e) => {
                notes.push(format!("auto: {method} failed: {e}"));
                candidates.push(Candidate { method, within_budget: false, val_accuracy: 0.0, reconstructed_asr_after: None, reinverted_ratio: None, status: RepairStatus::StillFlagged, attack_success_rate: None, seconds: 0.0, chosen: false, error: Some(e.to_string()) });
            }
        }
    }
    // Within the budget first, then the check's answer (no evidence, unverified, still
    // flagged), then the hardest to re-invert (see [`hardness`]), then the lowest
    // reconstructed-trigger attack success, then the highest validation accuracy.
    let key = |o: &DefenseOutcome| {
        let v = o.verification.as_ref();
        (o.within_budget, status_of(o), v.map_or(0.0, hardness), -v.and_then(|v| v.reconstructed_asr_after).unwrap_or(0.0), o.after.val_accuracy)
    };
    let best = (0..outcomes.len())
        .max_by(|&a, &b| key(&outcomes[a]).partial_cmp(&key(&outcomes[b])).expect("finite numbers"))
        .ok_or_else(|| Error::invalid("auto: every candidate defense failed (see the notes)"))?;
    let chosen = outcomes.swap_remove(best);
    for c in candidates.iter_mut() {
        c.chosen = c.method == chosen.method && c.error.is_none();
    }
    notes.push(if chosen.within_budget {
        let check = match status_of(&chosen) {
            RepairStatus::StillFlagged => "still flagged by the check without the trigger: no candidate within the budget removed the backdoor".to_string(),
            RepairStatus::Unverified => format!(
                "not flagged, but not verified either: no candidate within the budget made the old trigger as hard to find as on clean models ({:.2}x the reference); measure it with a known trigger if you have one",
                suspect.config.thresholds.removed_ratio
            ),
            RepairStatus::NoEvidence => "the check without the trigger finds no evidence left".to_string(),
        };
        format!("auto: kept {} (within the budget; {check})", chosen.method)
    } else {
        "auto: no candidate stayed within the clean-accuracy budget".to_string()
    });
    Ok((chosen, notes, candidates))
}
