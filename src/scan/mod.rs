//! Is this model backdoored? Trigger reconstruction from clean data alone, after Neural
//! Cleanse (Wang et al., S&P 2019), made fast and given a statistic that holds on spread-out
//! and global triggers.
//!
//! For every candidate target class the scan looks for the smallest change that sends clean
//! inputs of *other* classes to it, in two families:
//! - **patch**: `x' = (1 - m) x + m p` with a mask `m` (per pixel) and a pattern `p`, size =
//!   the mask's L1 norm in pixels (what a sticker needs);
//! - **additive**: `x' = clamp(x + d)` over the whole image, size = the L2 norm of `d` (what a
//!   blended or noise trigger needs, which a small mask cannot express).
//!
//! A backdoor's target needs a far smaller change than any other class. Inversion is training
//! with the roles swapped: the weights are frozen (no weight gradient is computed) and the
//! trigger tensors of *all* candidate classes ride in one batch, each row stamped with its
//! class's trigger, so one forward and backward serves every class. Every class gets the same
//! first-pass budget (the statistic compares classes only at equal step counts); the few
//! smallest, and two median "controls", are then refined for a better picture, and the
//! finalists' triggers are measured on held-out clean data (never on what they were fitted to).
//!
//! The statistic is a leave-one-out robust outlier test on log sizes: for class k,
//! `(median_j log s_j - log s_k) / (1.4826 MAD_j)` over the other classes j. Logs make it
//! scale-free (MNIST masks are spread out, GTSRB's small), and leaving the class out keeps a
//! strong outlier from inflating its own spread. Thresholds come from clean models only.
//!
//! All-to-all and untargeted backdoors have no single target class to stand out. For them each
//! family also reconstructs one trigger towards *any wrong class* (inputs of every class, loss
//! `-log(1 - p(true))`); on a clean model that takes about as much as reaching the easiest
//! class or more, so an untargeted trigger far smaller than the smallest class's, that misleads
//! held-out data, is a backdoor without a target ([`UntargetedResult`]).
//!
//! A third reading assumes no trigger shape: each class's widest reachable logit margin from
//! random inputs ([`margin`]). A class whose margin is far beyond any clean model's is a
//! suspect, refined in every family, and a target when its trigger works on held-out data.
//! [`noise`] (where the model collapses when its neurons are shaken) is reported on request.

use std::time::Instant;

use burn::tensor::activation::{log_softmax, sigmoid};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::data::{Dataset, Normalization, Split};
use crate::error::{Error, Result};
use crate::metrics::{argmax, predict, wilson};
use crate::model::ModelFile;
use crate::rng::Rng;
use crate::progress::Progress;
use crate::trigger::{Trigger, Use};

pub mod margin;
pub mod noise;
pub use margin::MarginConfig;
pub use noise::{NoiseCollapse, NoiseConfig};

/// A family of reconstructed triggers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Mask + pattern; size = mask L1 (pixels).
    Patch,
    /// Full-image additive pattern; size = L2 norm.
    Additive,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Patch => "patch",
            Family::Additive => "additive",
        }
    }

    /// What a size of this family measures, for the table's legend.
    pub fn size_unit(self) -> &'static str {
        match self {
            Family::Patch => "mask L1 (pixels)",
            Family::Additive => "L2 norm of the added pattern",
        }
    }
}

/// When a suspected class is called a target. Calibrated on clean models only: see
/// `docs/detection.md` and `scripts/scan_zoo.sh`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    /// Index at or above which a class is a suspect ("inconclusive" unless confirmed).
    pub suspect: f64,
    /// Index at or above which a suspect whose reconstructed trigger works on held-out data is
    /// a target: the model is "backdoored".
    pub flag: f64,
    /// The held-out attack success a reconstructed trigger must reach to confirm.
    pub confirm_asr: f64,
    /// A class whose refined trigger is at most this fraction of the controls' (median classes
    /// refined with the same budget) and works on held-out data is a target whatever its index:
    /// a patch backdoor's trigger keeps shrinking far below what any ordinary class needs, even
    /// when the first pass, on a large input, had not yet found it.
    pub max_control_ratio: f64,
    /// A class whose maximum-margin index ([`margin`]) is at least this is a suspect, refined
    /// in every family, and a target when a refined trigger of it works on held-out data and
    /// its trigger-size index reaches `suspect`.
    pub margin_flag: f64,
    /// The untargeted trigger's refined size over the smallest refined class's at or below
    /// which, when it misleads held-out data, the model has an untargeted or all-to-all
    /// backdoor (see [`UntargetedResult`]).
    pub untargeted_ratio: f64,
    /// A repair check ([`recheck`]): the suspect's trigger re-inverted on a repaired model at
    /// this fraction of the fresh scan's reference or more is as hard to find as on clean
    /// models. Between the flag and this the backdoor is neither found again nor shown gone.
    pub removed_ratio: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { suspect: SUSPECT_INDEX, flag: FLAG_INDEX, confirm_asr: 0.9, max_control_ratio: MAX_CONTROL_RATIO, margin_flag: MARGIN_FLAG, untargeted_ratio: UNTARGETED_RATIO, removed_ratio: REMOVED_RATIO }
    }
}

impl Thresholds {
    /// When a class is a target, in one sentence (what [`decide`] does), for the CLI and the
    /// reports.
    pub fn rule(&self) -> String {
        format!(
            "a class is a target when its reconstructed trigger reaches {:.0}% attack success on held-out clean inputs and either its index (in one family, or both families' combined) is {:.1} or more, or its refined size is at most {:.2} of the controls', or its maximum-margin index is {:.1} or more with an index of at least {:.1} (suspect: index {:.1}, that small a size or that margin)",
            100.0 * self.confirm_asr,
            self.flag,
            self.max_control_ratio,
            self.margin_flag,
            self.suspect,
            self.suspect
        )
    }
}

/// The default thresholds (see [`Thresholds`]), set on clean models only. On the 18 clean
/// models of the zoo of 2026-12-02 (docs/detection.md: LeNets, PyTorch CNNs and a residual net,
/// signnets, VGG, ResNet-18, DeepID, speechnet) the largest index of any class was 3.43 in one
/// family and 3.55 combined (a PyTorch MNIST CNN's naturally easy class 8), and the smallest
/// refined ratio to the controls 0.29; the flag keeps a margin of 1.4x above the indices, the
/// ratio one below. Suspects at 3.0 make a few clean models "inconclusive", never "backdoored".
pub const SUSPECT_INDEX: f64 = 3.0;
pub const FLAG_INDEX: f64 = 5.0;
pub const MAX_CONTROL_RATIO: f64 = 0.25;
/// On the 12 clean models of `scripts/scan_views.sh` (2026-12-07: LeNets, signnets on GTSRB
/// and the synthetic set, speechnet, DeepIDs; docs/detection.md) the largest maximum-margin
/// index of any class was 4.35 (a synthetic signnet's class 7); the flag keeps the indices'
/// margin of 1.4x above it. The zoo of 2026-12-07 then found a clean synthetic ResNet-18 with
/// a class at 16.9: a wide margin confirms only together with a trigger-size index at the
/// suspect level (see [`decide`]).
pub const MARGIN_FLAG: f64 = 6.1;
/// On clean models, a trigger that moves inputs of *every* class off their class is about as
/// large as the smallest that moves other classes' inputs into one, or larger: from 0.996x (the
/// PyTorch residual GTSRB model's additive pattern; 1.79x without it) up, on the clean models
/// of `scripts/scan_untargeted.sh` (2026-12-03: LeNets, signnets on GTSRB and the synthetic set,
/// speechnet, DeepID, and PyTorch's MNIST CNN and residual GTSRB net; docs/detection.md). The
/// flag keeps the index flag's margin of 1.4x below that smallest clean ratio.
pub const UNTARGETED_RATIO: f64 = 0.7;
/// What a removed backdoor looks like to [`recheck`]: each backdoored model's reconstructed
/// trigger re-inverted on a clean model of the same task and architecture, the outcome of a
/// perfect repair (`scripts/recheck_twins.sh`, 2026-12-08: 11 pairs of LeNets, signnets on
/// GTSRB and the synthetic set, DeepIDs; docs/detection.md). The re-inverted trigger was never
/// below 1.48x the clean model's reference; 1.0, a trigger as large as a median class's, keeps
/// at least the thresholds' 1.4x margin below that. Repairs that fooled the earlier two-answer
/// check (the real trigger still working) were re-found at 0.30-0.44x.
pub const REMOVED_RATIO: f64 = 1.0;

#[derive(Clone, Debug)]
pub struct ScanConfig {
    /// First-pass optimisation steps, the same for every candidate class.
    pub steps: usize,
    /// Further steps for the finalists and controls.
    pub refine_steps: usize,
    /// Smallest classes of each family refined and measured on held-out data.
    pub finalists: usize,
    /// Median classes refined alongside, as controls.
    pub controls: usize,
    /// Clean images per class per step.
    pub per_class: usize,
    /// Most images in one first-pass step, all classes together: with many classes each gets
    /// fewer (never below [`MIN_PER_CLASS`]), so the first pass costs about the same whatever
    /// the number of classes. Refinement always uses `per_class`.
    pub max_batch: usize,
    /// Adam's learning rate on the trigger tensors (Neural Cleanse's 0.1, betas 0.5/0.9).
    pub lr: f64,
    /// Fraction of the train split the defender has as clean data (inversion set).
    pub clean_fraction: f64,
    /// Candidate target classes; `None`: all.
    pub classes: Option<Vec<usize>>,
    pub families: Vec<Family>,
    /// Also reconstruct a trigger towards any wrong class (untargeted and all-to-all backdoors).
    pub untargeted: bool,
    /// The maximum-margin statistic ([`margin`]); `None`: not computed.
    pub margins: Option<MarginConfig>,
    /// Adversarial neuron noise ([`noise`]); `None` (the default): not applied. Reported, not
    /// part of the verdict.
    pub noise: Option<NoiseConfig>,
    pub thresholds: Thresholds,
    pub seed: u64,
}

/// The fewest images per class in a first-pass step.
pub const MIN_PER_CLASS: usize = 8;

impl ScanConfig {
    /// Images per class in a first-pass step over `classes` classes.
    pub fn first_pass_per_class(&self, classes: usize) -> usize {
        (self.max_batch / classes.max(1)).clamp(MIN_PER_CLASS.min(self.per_class), self.per_class)
    }
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            steps: 60,
            refine_steps: 140,
            finalists: 3,
            controls: 2,
            per_class: 24,
            max_batch: 512,
            lr: 0.1,
            clean_fraction: 1.0,
            classes: None,
            families: vec![Family::Patch, Family::Additive],
            untargeted: true,
            margins: Some(MarginConfig::default()),
            noise: None,
            thresholds: Thresholds::default(),
            seed: 0,
        }
    }
}

/// Where the optimisation of a class's trigger stands after the first pass.
#[derive(Clone, Debug, Serialize)]
pub struct ClassResult {
    pub class: usize,
    /// Smallest size at which the trigger sent at least 99% of a batch to the class (first
    /// pass); `None` when it never did ("never reached", not infinitely large).
    pub size: Option<f64>,
    /// The best batch attack success seen in the first pass.
    pub best_batch_asr: f64,
    /// Leave-one-out robust outlier index of the log size (see the module docs); `None`
    /// without a size.
    pub index: Option<f64>,
}

/// A class's maximum margin ([`margin::max_margins`]) and its leave-one-out robust outlier
/// index among the classes' ([`margin::outlier_indices`]).
#[derive(Clone, Debug, Serialize)]
pub struct ClassMargin {
    pub class: usize,
    pub margin: f64,
    pub index: Option<f64>,
}

/// A reconstructed trigger measured on held-out clean data (see [`holdout_success`]).
#[derive(Clone, Debug, Serialize)]
pub struct HeldOut {
    /// Its attack success: the share of held-out inputs of other classes sent to the target,
    /// or, for the untargeted trigger, of all held-out inputs sent to another class. `None`
    /// without a trigger or inputs to measure it on.
    pub holdout_asr: Option<f64>,
    pub holdout_asr_ci95: [f64; 2],
    pub holdout_samples: usize,
}

impl Default for HeldOut {
    /// Not measured: no trigger, or no inputs to measure it on (the interval is all of [0, 1]).
    fn default() -> HeldOut {
        HeldOut { holdout_asr: None, holdout_asr_ci95: [0.0, 1.0], holdout_samples: 0 }
    }
}

/// A refined trigger, measured on held-out clean data.
#[derive(Clone, Debug, Serialize)]
pub struct Finalist {
    pub class: usize,
    pub control: bool,
    /// Size after refinement.
    pub size: Option<f64>,
    /// Refined size over the median refined size of the controls.
    pub control_ratio: Option<f64>,
    #[serde(flatten)]
    pub held_out: HeldOut,
    #[serde(skip)]
    pub trigger: Option<Trigger>,
}

/// The smallest trigger that sends clean inputs to *any* wrong class, beside the per-class
/// ones: an untargeted or all-to-all backdoor has no target class to stand out, but its
/// trigger misleads far more cheaply than reaching even the easiest class does.
#[derive(Clone, Debug, Serialize)]
pub struct UntargetedResult {
    /// First-pass size (the class sizes' budget), `None` if never reached.
    pub size: Option<f64>,
    /// Size after refinement.
    pub refined_size: Option<f64>,
    /// The refined size over the smallest refined class's (the finalists').
    pub refined_ratio: Option<f64>,
    #[serde(flatten)]
    pub held_out: HeldOut,
    #[serde(skip)]
    pub trigger: Option<Trigger>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FamilyResult {
    pub family: Family,
    pub size_unit: &'static str,
    pub classes: Vec<ClassResult>,
    /// The untargeted trigger (when the scan looked for one).
    pub untargeted: Option<UntargetedResult>,
    /// Neural Cleanse's classical anomaly index of the smallest raw size (median of an even
    /// count = mean of the two middle values), for comparison with peers.
    pub nc_anomaly_index: Option<f64>,
    pub finalists: Vec<Finalist>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Backdoored,
    NoEvidence,
    Inconclusive,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Backdoored => "backdoored",
            Verdict::NoEvidence => "no-evidence",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One suspected target class. The evidence may come from two families: the largest index from
/// one, the confirming trigger from the other (a patch backdoor can stand out most among the
/// additive patterns, and its patch trigger confirm it); or from both together, when each family
/// sees the same class stand out a little (a blended trigger is reached by a patch and by a
/// full-image pattern alike).
#[derive(Clone, Debug, Serialize)]
pub struct Suspect {
    pub class: usize,
    /// The family of the reported trigger: the one that confirms, else the one of the index.
    pub family: Family,
    /// The class's evidence: the largest of its per-family indices and their combination.
    pub index: f64,
    /// The family of the largest per-family index.
    pub index_family: Family,
    /// The per-family indices combined as independent z-scores (Stouffer: their sum over the
    /// square root of their number), when more than one family scored the class.
    pub combined_index: Option<f64>,
    pub holdout_asr: Option<f64>,
    pub control_ratio: Option<f64>,
    /// The class's maximum-margin index is at the flag ([`Thresholds::margin_flag`]).
    pub wide_margin: bool,
    /// The trigger works on held-out data, and the index is at the flag, or the trigger far
    /// smaller than the controls', or the margin at its flag: the class is a target.
    pub confirmed: bool,
}

/// Evidence of a backdoor without a target class (see [`UntargetedResult`]).
#[derive(Clone, Debug, Serialize)]
pub struct UntargetedFinding {
    /// The family whose untargeted trigger is smallest relative to its classes'.
    pub family: Family,
    pub refined_ratio: f64,
    pub holdout_asr: Option<f64>,
    /// The ratio is at the threshold and the trigger misleads held-out data.
    pub confirmed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScanOutcome {
    pub verdict: Verdict,
    /// Suspected target classes, most likely first.
    pub targets: Vec<usize>,
    pub suspects: Vec<Suspect>,
    /// An untargeted or all-to-all backdoor's evidence, when some family's untargeted trigger
    /// is at or below the threshold ratio.
    pub untargeted: Option<UntargetedFinding>,
    pub families: Vec<FamilyResult>,
    /// Each candidate class's maximum margin (see [`margin`]), when computed.
    pub margins: Option<Vec<ClassMargin>>,
    /// Where the model sends held-out inputs when its neurons are shaken (see [`noise`]).
    pub noise: Option<NoiseCollapse>,
    pub thresholds: Thresholds,
    /// Clean accuracy of the model on the held-out split (checks the input pipeline).
    pub holdout_clean_accuracy: f64,
    pub inversion_samples: usize,
    pub holdout_samples: usize,
    pub notes: Vec<String>,
    pub seconds: f64,
    pub seconds_by_stage: Vec<(String, f64)>,
}

impl ScanOutcome {
    /// The smallest refined size of any finalist over its controls', over the families.
    pub fn min_control_ratio(&self) -> Option<f64> {
        self.families.iter().flat_map(|f| f.finalists.iter()).filter(|x| !x.control).filter_map(|x| x.control_ratio).reduce(f64::min)
    }

    /// The largest combined index of any class (see [`Suspect::combined_index`]).
    pub fn max_combined_index(&self) -> Option<f64> {
        scored_classes(&self.families).into_iter().filter_map(|c| class_evidence(&self.families, c)?.2).reduce(f64::max)
    }

    /// The largest margin index of any class (see [`margin`]), when margins were measured.
    pub fn max_margin_index(&self) -> Option<f64> {
        self.margins.as_ref()?.iter().filter_map(|m| m.index).reduce(f64::max)
    }

    /// The reconstructed trigger of the most likely target, if any class is suspected; else,
    /// or when the untargeted trigger confirms and no class does, the untargeted trigger
    /// (target `None`).
    pub fn best_trigger(&self) -> Option<(Option<usize>, Family, &Trigger)> {
        let untargeted_confirmed = self.untargeted.as_ref().is_some_and(|u| u.confirmed);
        let Some(s) = self.suspects.first().filter(|s| s.confirmed || !untargeted_confirmed) else {
            let u = self.untargeted.as_ref()?;
            let fam = self.families.iter().find(|f| f.family == u.family)?;
            return Some((None, u.family, fam.untargeted.as_ref()?.trigger.as_ref()?));
        };
        let fam = self.families.iter().find(|f| f.family == s.family)?;
        let fin = fam.finalists.iter().find(|f| f.class == s.class)?;
        Some((Some(s.class), s.family, fin.trigger.as_ref()?))
    }
}

/// Optimisation state of one class's trigger (host-side: a few small tensors per class).
#[derive(Clone)]
struct ClassState {
    /// Patch: mask logits (h*w) then pattern logits (c*h*w). Additive: the pattern (c*h*w).
    params: Vec<f32>,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    steps: usize,
    lambda: f64,
    /// Consecutive steps at / below the success threshold (Neural Cleanse's λ schedule).
    up: usize,
    down: usize,
    best_size: Option<f64>,
    best_params: Option<Vec<f32>>,
    best_batch_asr: f64,
}

impl ClassState {
    /// Records a step's batch attack success and size (both of the trigger *before* this
    /// update), takes the Adam step with `grad`, and moves λ by Neural Cleanse's schedule: more
    /// pressure on size while the trigger works, less while it does not.
    fn update(&mut self, target: usize, asr: f64, size: f64, grad: &[f32], lr: f64) -> Result<()> {
        if grad.iter().any(|g| !g.is_finite()) {
            return Err(Error::model(format!("the trigger of goal {target} (one past the last class: untargeted) got a non-finite gradient (NaN weights or activations?)")));
        }
        self.best_batch_asr = self.best_batch_asr.max(asr);
        if asr >= REACHED && self.best_size.is_none_or(|b| size < b) {
            self.best_size = Some(size);
            self.best_params = Some(self.params.clone());
        }
        adam(self, grad, lr);
        if asr >= REACHED {
            self.up += 1;
            self.down = 0;
        } else {
            self.down += 1;
            self.up = 0;
        }
        if self.up >= PATIENCE {
            self.lambda *= LAMBDA_UP;
            self.up = 0;
        } else if self.down >= PATIENCE {
            self.lambda /= LAMBDA_UP.powf(1.5);
            self.down = 0;
        }
        self.steps += 1;
        Ok(())
    }
}

const REACHED: f64 = 0.99;
const PATIENCE: usize = 5;
const LAMBDA_UP: f64 = 1.5;

/// The inversion set, held-out set and per-target pools, shared by every pass.
struct Inversion<'a> {
    file: &'a ModelFile,
    family: Family,
    shape: [usize; 3],
    inv: &'a Split,
    /// Indices of `inv` not of class t, for each class t; then, for the untargeted goal, all.
    pools: &'a [Vec<usize>],
    /// The goal "any wrong class": one past the last class.
    untargeted: usize,
    /// Its image draws, apart: the classes' draws are the same with or without it.
    untargeted_rng: std::cell::RefCell<Rng>,
    /// The inputs' value range: patterns stay inside it ([0, 1] for images).
    range: [f32; 2],
    mean: Tensor<4>,
    std: Tensor<4>,
    device: Device,
}

impl Inversion<'_> {
    fn param_len(&self) -> usize {
        let [c, h, w] = self.shape;
        match self.family {
            Family::Patch => h * w + c * h * w,
            Family::Additive => c * h * w,
        }
    }

    fn init(&self) -> ClassState {
        let n = self.param_len();
        let [_, h, w] = self.shape;
        let mut params = vec![0f32; n];
        if self.family == Family::Patch {
            // mask = sigmoid(-2) ~ 0.12 everywhere, pattern = 0.5.
            params[..h * w].fill(-2.0);
        }
        let lambda = match self.family {
            Family::Patch => 1e-3,
            Family::Additive => 1e-2,
        };
        ClassState { params, adam_m: vec![0.0; n], adam_v: vec![0.0; n], steps: 0, lambda, up: 0, down: 0, best_size: None, best_params: None, best_batch_asr: 0.0 }
    }

    /// A state that starts from `trigger` instead of the neutral start: a re-inversion of a
    /// repaired model begins where the suspect's trigger was.
    fn init_from(&self, trigger: &Trigger) -> Result<ClassState> {
        let mut st = self.init();
        st.params = params_of(self.family, self.shape, self.range, trigger)?;
        Ok(st)
    }

    fn trigger(&self, params: &[f32]) -> Trigger {
        trigger_of(self.family, self.shape, self.range, params)
    }

    /// One batched step for the goals `live` (indices into `states`; `targets` are their
    /// classes, the goal [`Inversion::untargeted`] any wrong class).
    fn step(&self, live: &[usize], targets: &[usize], states: &mut [ClassState], per_class: usize, lr: f64, rng: &mut Rng) -> Result<()> {
        let [c, h, w] = self.shape;
        let sample_len = c * h * w;
        let l = live.len();
        let n = l * per_class;
        let mut xs = Vec::with_capacity(n * sample_len);
        let mut rows = Vec::with_capacity(n);
        // A targeted row's label is its goal; an untargeted row's, the true class it must leave.
        let mut labels = Vec::with_capacity(n);
        let mut away = Vec::with_capacity(n);
        for (k, &s) in live.iter().enumerate() {
            let untargeted = targets[s] == self.untargeted;
            let pool = &self.pools[targets[s]];
            for _ in 0..per_class {
                let i = if untargeted { pool[self.untargeted_rng.borrow_mut().below(pool.len())] } else { pool[rng.below(pool.len())] };
                xs.extend_from_slice(self.inv.sample(i));
                rows.push(k as i64);
                labels.push(if untargeted { self.inv.labels[i] as i64 } else { targets[s] as i64 });
                away.push(if untargeted { 1f32 } else { 0.0 });
            }
        }
        let host_labels: Vec<usize> = labels.iter().map(|&y| y as usize).collect();
        let any_away = away.contains(&1.0);
        let away = Tensor::<2>::from_data(TensorData::new(away, [n, 1]), &self.device);
        let x = Tensor::<4>::from_data(TensorData::new(xs, [n, c, h, w]), &self.device);
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &self.device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &self.device);
        let plen = self.param_len();
        let stacked: Vec<f32> = live.iter().flat_map(|&s| states[s].params.iter().copied()).collect();
        let lambdas = Tensor::<1>::from_data(TensorData::new(live.iter().map(|&s| states[s].lambda as f32).collect::<Vec<_>>(), [l]), &self.device);
        let ad = self.device.clone().autodiff();
        let (stamped, size, leaves): (Tensor<4>, Tensor<1>, Vec<Tensor<4>>) = match self.family {
            Family::Patch => {
                let mut a = Vec::with_capacity(l * h * w);
                let mut b = Vec::with_capacity(l * c * h * w);
                for chunk in stacked.chunks(plen) {
                    a.extend_from_slice(&chunk[..h * w]);
                    b.extend_from_slice(&chunk[h * w..]);
                }
                let a = Tensor::<4>::from_data(TensorData::new(a, [l, 1, h, w]), &ad).require_grad();
                let b = Tensor::<4>::from_data(TensorData::new(b, [l, c, h, w]), &ad).require_grad();
                let [lo, hi] = self.range;
                let m = sigmoid(a.clone());
                let p = sigmoid(b.clone()).mul_scalar(hi - lo).add_scalar(lo);
                let size = m.clone().sum_dim(3).sum_dim(2).reshape([l]);
                let mr = m.select(0, rows.clone().autodiff());
                let pr = p.select(0, rows.clone().autodiff());
                let stamped = x.autodiff() * (mr.clone().neg() + 1.0) + pr * mr;
                (stamped, size, vec![a, b])
            }
            Family::Additive => {
                let d = Tensor::<4>::from_data(TensorData::new(stacked, [l, c, h, w]), &ad).require_grad();
                let size = (d.clone() * d.clone()).sum_dim(3).sum_dim(2).sum_dim(1).reshape([l]).add_scalar(1e-12).sqrt();
                let stamped = (x.autodiff() + d.clone().select(0, rows.clone().autodiff())).clamp(self.range[0], self.range[1]);
                (stamped, size, vec![d])
            }
        };
        let normalised = (stamped - self.mean.clone().autodiff()) / self.std.clone().autodiff();
        let logits = self.file.model.forward(normalised);
        let hits = argmax(logits.clone().detach());
        let logp = log_softmax(logits, 1).gather(1, labels.clone().autodiff().reshape([n, 1]));
        // Towards the goal: -log p(goal). Away from the true class: -log(1 - p(true)), only
        // computed when the batch has untargeted rows.
        let log_success = if any_away {
            let leave = (logp.clone().exp().neg() + 1.0).clamp_min(1e-6).log();
            let away = away.autodiff();
            logp * (away.clone().neg() + 1.0) + leave * away
        } else {
            logp
        };
        let ce = log_success.sum().neg().div_scalar(per_class as f64);
        let loss = ce + (size.clone() * lambdas.autodiff()).sum();
        let grads = loss.backward();
        let sizes = host(size.detach().without_autodiff());
        let mut grad_rows: Vec<Vec<f32>> = vec![Vec::with_capacity(plen); l];
        match self.family {
            Family::Patch => {
                let ga = host(leaves[0].grad(&grads).ok_or_else(|| Error::model("no gradient reached the trigger mask"))?);
                let gb = host(leaves[1].grad(&grads).ok_or_else(|| Error::model("no gradient reached the trigger pattern"))?);
                for (k, g) in grad_rows.iter_mut().enumerate() {
                    g.extend_from_slice(&ga[k * h * w..(k + 1) * h * w]);
                    g.extend_from_slice(&gb[k * c * h * w..(k + 1) * c * h * w]);
                }
            }
            Family::Additive => {
                let gd = host(leaves[0].grad(&grads).ok_or_else(|| Error::model("no gradient reached the trigger pattern"))?);
                for (k, g) in grad_rows.iter_mut().enumerate() {
                    g.extend_from_slice(&gd[k * plen..(k + 1) * plen]);
                }
            }
        }
        for (k, &s) in live.iter().enumerate() {
            let batch = k * per_class..(k + 1) * per_class;
            let hit = |(p, y): (&usize, &usize)| if targets[s] == self.untargeted { p != y } else { p == y };
            let asr = hits[batch.clone()].iter().zip(&host_labels[batch]).filter(|&r| hit(r)).count() as f64 / per_class as f64;
            states[s].update(targets[s], asr, sizes[k] as f64, &grad_rows[k], lr)?;
        }
        Ok(())
    }

    /// Runs `steps` batched steps on the classes `live`, reporting progress.
    #[allow(clippy::too_many_arguments)]
    fn run(&self, live: &[usize], targets: &[usize], states: &mut [ClassState], steps: usize, per_class: usize, cfg: &ScanConfig, rng: &mut Rng, label: &str, progress: &mut dyn Progress) -> Result<()> {
        progress.phase(label, steps);
        for s in 0..steps {
            self.step(live, targets, states, per_class, cfg.lr, rng)?;
            progress.work(s + 1, steps);
        }
        Ok(())
    }
}

/// The trigger a family's optimisation parameters stand for: patch parameters are the mask's
/// logits (h*w) then the pattern's (c*h*w, squashed into `range`); additive ones the pattern.
fn trigger_of(family: Family, shape: [usize; 3], range: [f32; 2], params: &[f32]) -> Trigger {
    let [_, h, w] = shape;
    let sig = |a: f32| 1.0 / (1.0 + (-a).exp());
    let [lo, hi] = range;
    match family {
        Family::Patch => Trigger::Reconstructed { shape, mask: Some(params[..h * w].iter().map(|&a| sig(a)).collect()), pattern: params[h * w..].iter().map(|&b| lo + (hi - lo) * sig(b)).collect(), range },
        Family::Additive => Trigger::Reconstructed { shape, mask: None, pattern: params.to_vec(), range },
    }
}

/// The inverse of [`trigger_of`] (mask and pattern values at the ends of their ranges are
/// pulled in by 1e-4, where the logit is finite).
fn params_of(family: Family, shape: [usize; 3], range: [f32; 2], trigger: &Trigger) -> Result<Vec<f32>> {
    let [c, h, w] = shape;
    let [lo, hi] = range;
    let logit = |v: f32| {
        let v = v.clamp(1e-4, 1.0 - 1e-4);
        (v / (1.0 - v)).ln()
    };
    let Trigger::Reconstructed { shape: own, mask, pattern, .. } = trigger else {
        return Err(Error::invalid("a re-inversion starts from a reconstructed trigger"));
    };
    if *own != shape || pattern.len() != c * h * w || mask.as_ref().is_some_and(|m| m.len() != h * w) {
        return Err(Error::invalid(format!("the trigger to start from is for inputs {own:?}, the model takes {shape:?}")));
    }
    match (family, mask) {
        (Family::Patch, Some(m)) => Ok(m.iter().map(|&v| logit(v)).chain(pattern.iter().map(|&v| logit((v - lo) / (hi - lo).max(f32::MIN_POSITIVE)))).collect()),
        (Family::Additive, None) => Ok(pattern.clone()),
        _ => Err(Error::invalid(format!("the trigger to start from is not of the {} family", family.name()))),
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

/// One Adam step (betas 0.5, 0.9 as Neural Cleanse) on the host-side parameters.
fn adam(st: &mut ClassState, g: &[f32], lr: f64) {
    const B1: f32 = 0.5;
    const B2: f32 = 0.9;
    let t = (st.steps + 1) as i32;
    let (c1, c2) = (1.0 - B1.powi(t), 1.0 - B2.powi(t));
    for i in 0..g.len() {
        st.adam_m[i] = B1 * st.adam_m[i] + (1.0 - B1) * g[i];
        st.adam_v[i] = B2 * st.adam_v[i] + (1.0 - B2) * g[i] * g[i];
        let mh = st.adam_m[i] / c1;
        let vh = st.adam_v[i] / c2;
        st.params[i] -= lr as f32 * mh / (vh.sqrt() + 1e-8);
    }
}

/// Median with the mean of the two middle values for an even count (peers differ here; this
/// is NumPy's definition).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) }
}

/// The spread below which a MAD is not trusted: 0.15 in log size. A class's log size moves by
/// up to 0.09 (standard deviation over three seeds; median 0.02-0.07) when the scan is re-run
/// with another seed (clean MNIST LeNet, PyTorch MNIST CNN and synthetic signnet, 2026-12-02),
/// so smaller differences between classes are not resolved. Without the floor, half the classes stuck at nearly the
/// same size after the first pass made an ordinary easy class look like an extreme outlier
/// (a clean PyTorch MNIST CNN: index 9.4 with a 5% floor, 3.2 with this one).
const MIN_LOG_MAD: f64 = 0.15;

/// Leave-one-out robust outlier indices of `sizes` on a log scale: for class k,
/// `(median_{j != k} log s_j - log s_k) / (1.4826 MAD_{j != k})`. Classes without a size get
/// no index (and count among the others as the largest size seen, twice over: they are the
/// hardest to reach).
pub fn outlier_indices(sizes: &[Option<f64>]) -> Vec<Option<f64>> {
    let largest = sizes.iter().flatten().fold(f64::MIN_POSITIVE, |a, &b| a.max(b));
    let logs: Vec<f64> = sizes.iter().map(|s| s.unwrap_or(2.0 * largest).max(1e-9).ln()).collect();
    // Smaller is more suspicious: the index is the negated z-score.
    (0..sizes.len()).map(|k| sizes[k].and(leave_one_out_z(&logs, k, MIN_LOG_MAD)).map(|z| -z)).collect()
}

/// `(v_k - median_{j != k} v_j) / max(1.4826 MAD_{j != k}, floor)`; `None` with fewer than two
/// others or no spread at all.
pub fn leave_one_out_z(values: &[f64], k: usize, floor: f64) -> Option<f64> {
    let others: Vec<f64> = values.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, &v)| v).collect();
    if others.len() < 2 {
        return None;
    }
    let m = median(&others);
    let dev: Vec<f64> = others.iter().map(|v| (v - m).abs()).collect();
    let mad = (1.4826 * median(&dev)).max(floor);
    (mad > 0.0).then(|| (values[k] - m) / mad)
}

/// Neural Cleanse's anomaly index of the smallest size: `|min - median| / (1.4826 MAD)` over
/// all reached sizes.
pub fn nc_anomaly_index(sizes: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = sizes.iter().flatten().copied().collect();
    if v.len() < 3 {
        return None;
    }
    let m = median(&v);
    let dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    let mad = 1.4826 * median(&dev);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    (mad > 0.0).then(|| (m - min).abs() / mad)
}

/// Scans `file` with the clean data of `ds`: the train split (a `clean_fraction` of it) to
/// invert on, the validation split held out to measure the reconstructed triggers.
pub fn scan(file: &ModelFile, ds: &Dataset, cfg: &ScanConfig, device: &Device, progress: &mut dyn Progress) -> Result<ScanOutcome> {
    Ok(scan_then_reinvert(file, ds, cfg, None, device, progress)?.0)
}

/// A reconstructed trigger searched for again on a model (see [`recheck`]).
#[derive(Clone, Debug, Serialize)]
pub struct Recheck {
    pub reinversion: Reinversion,
    /// Its size over the scan's reference in its family: the controls' median refined size for
    /// a class, the smallest refined class's for the untargeted goal (the scale the scan's own
    /// flags are set on).
    pub reinverted_ratio: Option<f64>,
    /// That ratio is at the scan's own threshold (the control ratio for a class, the untargeted
    /// ratio for the untargeted goal) and the trigger works on held-out data: the backdoor the
    /// trigger stood for is still there.
    pub reinverted_flagged: bool,
    /// The trigger was not found again, or only at [`Thresholds::removed_ratio`] of the
    /// reference or more: as hard to find as on clean models, no evidence the backdoor it stood
    /// for is left.
    pub reinverted_removed: bool,
}

/// Scans `file` and searches again for `trigger` (an earlier scan's reconstruction, towards
/// `target` or, with `None`, any wrong class) from where it was, measured against this scan:
/// is the backdoor the trigger stood for still there? `defend` checks every repair this way;
/// `scan --recheck` checks a model repaired anywhere.
///
/// Why a search from where the trigger was: a defense can learn to ignore one reconstructed
/// trigger (unlearning trains on exactly it) while a trigger near it, such as the real one,
/// still works; replaying the reconstruction misses that, and so can a cold scan, whose search
/// starts far away. A repaired model needs a large trigger again; a backdoor still in place is
/// found small near where it was.
pub fn recheck(file: &ModelFile, ds: &Dataset, cfg: &ScanConfig, trigger: &Trigger, target: Option<usize>, device: &Device, progress: &mut dyn Progress) -> Result<(ScanOutcome, Recheck)> {
    let (outcome, reinversion) = scan_then_reinvert(file, ds, cfg, Some((trigger, target)), device, progress)?;
    let reinversion = reinversion.expect("a re-inversion was asked for");
    let th = &cfg.thresholds;
    let reinverted_ratio = reinverted_ratio(&outcome, &reinversion);
    let limit = if target.is_some() { th.max_control_ratio } else { th.untargeted_ratio };
    let reinverted_flagged = reinverted_ratio.is_some_and(|q| q <= limit) && reinversion.held_out.holdout_asr.is_some_and(|a| a >= th.confirm_asr);
    let reinverted_removed = reinversion.size.is_none() || reinverted_ratio.is_some_and(|q| q >= th.removed_ratio);
    Ok((outcome, Recheck { reinversion, reinverted_ratio, reinverted_flagged, reinverted_removed }))
}

/// A re-inverted trigger's size over the scan's reference in its family (see
/// [`Recheck::reinverted_ratio`]).
pub fn reinverted_ratio(outcome: &ScanOutcome, r: &Reinversion) -> Option<f64> {
    let fam = outcome.families.iter().find(|f| f.family == r.family)?;
    let refined = |control: bool| fam.finalists.iter().filter(move |x| x.control == control).filter_map(|x| x.size);
    let reference = if r.target.is_some() {
        let controls: Vec<f64> = refined(true).collect();
        (!controls.is_empty()).then(|| median(&controls))?
    } else {
        refined(false).reduce(f64::min)?
    };
    Some(r.size? / reference.max(1e-12))
}

/// The scan, then (when `again` names a trigger and its goal) that trigger re-inverted on the
/// same clean sets.
fn scan_then_reinvert(file: &ModelFile, ds: &Dataset, cfg: &ScanConfig, again: Option<(&Trigger, Option<usize>)>, device: &Device, progress: &mut dyn Progress) -> Result<(ScanOutcome, Option<Reinversion>)> {
    let start = Instant::now();
    let mut last = Instant::now();
    let mut stages = vec![];
    let mut lap = |name: &str, stages: &mut Vec<(String, f64)>| {
        stages.push((name.to_string(), last.elapsed().as_secs_f64()));
        last = Instant::now();
    };
    let device = device.clone().without_autodiff();
    let classes = file.info.classes.len();
    let shape = file.model.graph.input_shape;
    if classes < 2 {
        return Err(Error::invalid(format!("the model has {classes} class(es); a scan compares target classes and needs at least two")));
    }
    crate::metrics::check_fits(file, &ds.train)?;
    let candidates: Vec<usize> = match &cfg.classes {
        Some(list) => {
            if let Some(&bad) = list.iter().find(|&&c| c >= classes) {
                return Err(Error::invalid(format!("class {bad} is not a class of the model (0..{classes})")));
            }
            if list.is_empty() {
                return Err(Error::invalid("the list of candidate classes is empty"));
            }
            let mut l = list.clone();
            l.sort_unstable();
            l.dedup();
            l
        }
        None => (0..classes).collect(),
    };
    if cfg.steps == 0 || cfg.per_class == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::invalid("scan steps, images per class and learning rate must be positive"));
    }
    let th = &cfg.thresholds;
    let ratios = [th.max_control_ratio, th.untargeted_ratio, th.removed_ratio];
    if !(th.suspect.is_finite() && th.flag.is_finite() && th.margin_flag.is_finite() && (0.0..=1.0).contains(&th.confirm_asr) && ratios.iter().all(|r| r.is_finite() && *r >= 0.0)) {
        return Err(Error::invalid(format!("scan thresholds must be finite, the ratios not negative and the attack success in [0, 1]: {th:?}")));
    }
    // A trigger to search for again is checked before any work.
    let again = match again {
        Some((trigger, target)) => {
            if let Some(t) = target.filter(|&t| t >= classes) {
                return Err(Error::invalid(format!("the trigger to re-check was towards class {t}, which is not a class of the model (0..{classes})")));
            }
            Some((trigger, target, start_of(trigger, shape)?))
        }
        None => None,
    };
    let mut notes = vec![];
    let sets = clean_sets(file, ds, cfg, &candidates, &device, &mut notes, progress)?;
    let CleanSets { inv, hold, pools, range, hold_accuracy: hold_acc } = &sets;
    lap("clean data check", &mut stages);
    let norm = &file.info.normalization;
    let (mean, std) = norm_tensors(norm, shape[0], &device);
    let margins: Option<Vec<ClassMargin>> = match &cfg.margins {
        Some(mc) => {
            let best = margin::max_margins(file, &candidates, *range, &mean, &std, mc, cfg.seed, &device, progress)?;
            let idx = margin::outlier_indices(&best);
            lap("margins", &mut stages);
            Some(candidates.iter().zip(best).zip(idx).map(|((&class, margin), index)| ClassMargin { class, margin, index }).collect())
        }
        None => None,
    };
    // Classes whose margin is at the flag: suspects, refined in every family.
    let wide: Vec<usize> = margins.iter().flatten().filter(|m| m.index.is_some_and(|i| i >= th.margin_flag)).map(|m| m.class).collect();
    let noise = match &cfg.noise {
        Some(nc) => {
            let r = noise::collapse(&file.model, inv, hold, norm, classes, nc, cfg.seed, &device, progress)?;
            lap("neuron noise", &mut stages);
            r
        }
        None => None,
    };
    let mut rng = Rng::new(cfg.seed ^ 0x5CA7);
    let mut families = vec![];
    for &family in &cfg.families {
        let job = Inversion { file, family, shape, inv, pools, untargeted: classes, untargeted_rng: std::cell::RefCell::new(Rng::new(cfg.seed ^ 0xA11)), range: *range, mean: mean.clone(), std: std.clone(), device: device.clone() };
        // The goals: the candidate classes, then (last) any wrong class.
        let goals: Vec<usize> = candidates.iter().copied().chain(cfg.untargeted.then_some(classes)).collect();
        let u_slot = cfg.untargeted.then_some(candidates.len());
        let mut states: Vec<ClassState> = goals.iter().map(|_| job.init()).collect();
        let all: Vec<usize> = (0..goals.len()).collect();
        let first = cfg.first_pass_per_class(candidates.len());
        let also = if cfg.untargeted { " and the untargeted goal" } else { "" };
        job.run(&all, &goals, &mut states, cfg.steps, first, cfg, &mut rng, &format!("scan ({}): {} classes{also} x {} steps, {first} images each", family.name(), candidates.len(), cfg.steps), progress)?;
        lap(&format!("{} first pass", family.name()), &mut stages);

        // The statistic, at equal budgets.
        let sizes: Vec<Option<f64>> = states[..candidates.len()].iter().map(|s| s.best_size).collect();
        let u_first = u_slot.and_then(|u| states[u].best_size);
        let idx = outlier_indices(&sizes);
        let class_results: Vec<ClassResult> = candidates
            .iter()
            .enumerate()
            .map(|(s, &class)| ClassResult { class, size: sizes[s], best_batch_asr: states[s].best_batch_asr, index: idx[s] })
            .collect();
        let never = sizes.iter().filter(|s| s.is_none()).count();
        if never > 0 {
            notes.push(format!("{}: {never} of {} classes never reached {:.0}% attack success in the first pass (shown as \"never reached\")", family.name(), candidates.len(), 100.0 * REACHED));
        }

        // Refine the smallest and a few median controls.
        let mut order: Vec<usize> = (0..candidates.len()).filter(|&s| sizes[s].is_some()).collect();
        order.sort_by(|&a, &b| sizes[a].partial_cmp(&sizes[b]).expect("finite sizes"));
        // The smallest, and any class whose margin is at the flag: its trigger must be measured
        // to confirm it, wherever its size ranks.
        let mut finalists: Vec<usize> = order.iter().copied().take(cfg.finalists).collect();
        finalists.extend(order.iter().copied().skip(cfg.finalists).filter(|&s| wide.contains(&candidates[s])));
        let mid = order.len() / 2;
        let controls: Vec<usize> = order.iter().copied().skip(mid.saturating_sub(cfg.controls / 2)).filter(|s| !finalists.contains(s)).take(cfg.controls).collect();
        let refine: Vec<usize> = finalists.iter().chain(&controls).copied().collect();
        let refined: Vec<usize> = refine.iter().copied().chain(u_slot).collect();
        if cfg.refine_steps > 0 && !refined.is_empty() {
            job.run(&refined, &goals, &mut states, cfg.refine_steps, cfg.per_class, cfg, &mut rng, &format!("scan ({}): refining {} finalists and {} controls{also}, {} steps", family.name(), finalists.len(), controls.len(), cfg.refine_steps), progress)?;
        }
        lap(&format!("{} refinement", family.name()), &mut stages);

        // Held-out measurement of the refined triggers.
        progress.phase(&format!("scan ({}): measuring the reconstructed triggers on held-out data", family.name()), 0);
        let mut fin = vec![];
        for &s in &refine {
            let class = candidates[s];
            let st = &states[s];
            let trigger = st.best_params.as_ref().map(|p| job.trigger(p));
            let held_out = trigger.as_ref().map(|t| holdout_success(file, hold, t, Some(class), shape, &device)).transpose()?.unwrap_or_default();
            fin.push(Finalist { class, control: controls.contains(&s), size: st.best_size, control_ratio: None, held_out, trigger });
        }
        let control_sizes: Vec<f64> = fin.iter().filter(|f| f.control).filter_map(|f| f.size).collect();
        if !control_sizes.is_empty() {
            let m = median(&control_sizes);
            for f in fin.iter_mut() {
                f.control_ratio = f.size.map(|s| s / m.max(1e-12));
            }
        }
        let untargeted = match u_slot {
            Some(u) => {
                let st = &states[u];
                let trigger = st.best_params.as_ref().map(|p| job.trigger(p));
                let held_out = trigger.as_ref().map(|t| holdout_success(file, hold, t, None, shape, &device)).transpose()?.unwrap_or_default();
                let smallest_refined = fin.iter().filter(|f| !f.control).filter_map(|f| f.size).reduce(f64::min);
                let refined_ratio = st.best_size.zip(smallest_refined).map(|(u, c)| u / c.max(1e-12));
                Some(UntargetedResult { size: u_first, refined_size: st.best_size, refined_ratio, held_out, trigger })
            }
            None => None,
        };
        lap(&format!("{} held-out check", family.name()), &mut stages);
        families.push(FamilyResult { family, size_unit: family.size_unit(), nc_anomaly_index: nc_anomaly_index(&sizes), classes: class_results, untargeted, finalists: fin });
    }

    let reinversion = match again {
        Some((trigger, target, (family, start_size))) => {
            let r = reinvert(file, cfg, &sets, trigger, family, start_size, target, &device, progress)?;
            lap(&format!("{} re-inversion", family.name()), &mut stages);
            Some(r)
        }
        None => None,
    };
    let th = cfg.thresholds;
    let (verdict, suspects, untargeted) = decide(&families, &wide, &th);
    let targets = suspects.iter().map(|s| s.class).collect();
    match &untargeted {
        Some(u) if u.confirmed => notes.push(format!(
            "a {} trigger {:.2}x the size of the smallest class's sends {:.0}% of held-out inputs to other classes: an untargeted or all-to-all backdoor (no single target class)",
            u.family.name(),
            u.refined_ratio,
            100.0 * u.holdout_asr.unwrap_or(0.0)
        )),
        _ if cfg.untargeted => notes.push(format!("untargeted and all-to-all backdoors are looked for as a trigger towards any wrong class, flagged at {:.2}x the smallest class's or less; one whose trigger is larger goes unseen", th.untargeted_ratio)),
        _ => notes.push("untargeted and all-to-all backdoors were not looked for (no untargeted goal)".into()),
    }
    let outcome = ScanOutcome {
        verdict,
        targets,
        suspects,
        untargeted,
        families,
        margins,
        noise,
        thresholds: th,
        holdout_clean_accuracy: *hold_acc,
        inversion_samples: inv.len(),
        holdout_samples: hold.len(),
        notes,
        seconds: start.elapsed().as_secs_f64(),
        seconds_by_stage: stages,
    };
    Ok((outcome, reinversion))
}

/// A trigger searched for again from an earlier scan's reconstruction ([`recheck`]).
#[derive(Clone, Debug, Serialize)]
pub struct Reinversion {
    pub family: Family,
    /// The goal: a class, or `None` for any wrong class.
    pub target: Option<usize>,
    /// The suspect's trigger's size, where the search started.
    pub start_size: f64,
    /// The smallest size at which the re-inverted trigger sent 99% of a batch to the goal;
    /// `None` if it never did.
    pub size: Option<f64>,
    #[serde(flatten)]
    pub held_out: HeldOut,
    /// The re-inverted trigger itself (at its smallest working size), when it was found.
    #[serde(skip)]
    pub trigger: Option<Trigger>,
}

/// `start` (an earlier scan's reconstruction, towards `target` or, with `None`, any wrong
/// class) searched for again on `file` from where it was, on the clean data a scan with `cfg`
/// uses, without the scan around it: one re-inversion, for a repair's own rounds (unlearning
/// checks with it whether the trigger is still easy to find). Its size is measured against a
/// reference the caller holds, such as the suspect scan's (see [`reinverted_ratio`]).
pub fn reinvert_alone(file: &ModelFile, ds: &Dataset, cfg: &ScanConfig, start: &Trigger, target: Option<usize>, device: &Device, progress: &mut dyn Progress) -> Result<Reinversion> {
    let device = device.clone().without_autodiff();
    let classes = file.info.classes.len();
    if let Some(t) = target.filter(|&t| t >= classes) {
        return Err(Error::invalid(format!("the trigger to re-invert was towards class {t}, which is not a class of the model (0..{classes})")));
    }
    let (family, start_size) = start_of(start, file.model.graph.input_shape)?;
    let candidates: Vec<usize> = (0..classes).collect();
    let sets = clean_sets(file, ds, cfg, &candidates, &device, &mut vec![], progress)?;
    reinvert(file, cfg, &sets, start, family, start_size, target, &device, progress)
}

/// The family and size of a trigger a re-inversion can start from: a scan's reconstruction
/// for inputs of `shape` (a patch with a mask, size its L1; an additive pattern without, size
/// its L2 norm).
fn start_of(start: &Trigger, shape: [usize; 3]) -> Result<(Family, f64)> {
    let (family, size) = match start {
        Trigger::Reconstructed { mask: Some(m), .. } => (Family::Patch, m.iter().map(|&v| v as f64).sum()),
        Trigger::Reconstructed { mask: None, pattern, .. } => (Family::Additive, pattern.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()),
        _ => return Err(Error::invalid("a re-inversion starts from a reconstructed trigger (a scan's FAMILY-classK.json)")),
    };
    // The shape and the arrays' lengths are checked here, before any scan; the conversion
    // itself waits for the clean data's value range.
    params_of(family, shape, [0.0, 1.0], start)?;
    Ok((family, size))
}

/// Re-inverts `start` (of `family`, `start_size` large) on `file` towards `target` (`None`: any
/// wrong class): `cfg.refine_steps` steps of the scan's objective that begin from it rather
/// than from scratch, on the scan's clean sets.
#[allow(clippy::too_many_arguments)]
fn reinvert(file: &ModelFile, cfg: &ScanConfig, sets: &CleanSets, start: &Trigger, family: Family, start_size: f64, target: Option<usize>, device: &Device, progress: &mut dyn Progress) -> Result<Reinversion> {
    let classes = file.info.classes.len();
    let shape = file.model.graph.input_shape;
    let (mean, std) = norm_tensors(&file.info.normalization, shape[0], device);
    let job = Inversion { file, family, shape, inv: &sets.inv, pools: &sets.pools, untargeted: classes, untargeted_rng: std::cell::RefCell::new(Rng::new(cfg.seed ^ 0xA11)), range: sets.range, mean, std, device: device.clone() };
    let goal = target.unwrap_or(classes);
    let mut states = vec![job.init_from(start)?];
    let mut rng = Rng::new(cfg.seed ^ 0x5CA7);
    let what = target.map_or("the untargeted goal".to_string(), |t| format!("class {t}"));
    let steps = cfg.refine_steps.max(1);
    job.run(&[0], &[goal], &mut states, steps, cfg.per_class, cfg, &mut rng, &format!("re-inverting the {} trigger of {what} from where it was, {steps} steps", family.name()), progress)?;
    let st = &states[0];
    let trigger = st.best_params.as_ref().map(|p| job.trigger(p));
    let held_out = trigger.as_ref().map(|t| holdout_success(file, &sets.hold, t, target, shape, device)).transpose()?.unwrap_or_default();
    Ok(Reinversion { family, target, start_size, size: st.best_size, held_out, trigger })
}

/// The clean data a scan inverts on and measures with.
struct CleanSets {
    /// Correctly classified defender samples of the train split: what triggers are fitted to.
    inv: Split,
    /// Correctly classified validation samples (the test split without one): held out.
    hold: Split,
    /// Indices of `inv` not of class t, for each class t; then, for the untargeted goal, all.
    pools: Vec<Vec<usize>>,
    /// The inputs' value range: patterns stay inside it.
    range: [f32; 2],
    hold_accuracy: f64,
}

/// Stage 0 of a scan: the clean data. Only correctly classified inputs: a trigger should change
/// the model's mind, not exploit its mistakes.
fn clean_sets(file: &ModelFile, ds: &Dataset, cfg: &ScanConfig, candidates: &[usize], device: &Device, notes: &mut Vec<String>, progress: &mut dyn Progress) -> Result<CleanSets> {
    let classes = file.info.classes.len();
    let audio = !ds.train.waves.is_empty();

    let clean = crate::data::defender_split(&ds.train, cfg.clean_fraction, cfg.seed)?;
    progress.phase("scan: checking the clean data", 0);
    let norm = &file.info.normalization;
    let keep_correct = |s: &Split| -> (Split, f64) {
        let preds = predict(&file.model, s, norm, device, 256);
        let idx: Vec<usize> = (0..s.len()).filter(|&i| preds[i] == s.labels[i]).collect();
        let acc = idx.len() as f64 / s.len().max(1) as f64;
        (s.subset(&idx), acc)
    };
    let (inv, inv_acc) = keep_correct(&clean);
    let holdout_src = if ds.val.is_empty() { &ds.test } else { &ds.val };
    if ds.val.is_empty() {
        notes.push("there is no validation split; the reconstructed triggers are measured on the test split".into());
    }
    let (hold, hold_acc) = keep_correct(holdout_src);
    let chance = 1.0 / classes as f64;
    if inv_acc < (3.0 * chance).min(0.5) {
        return Err(Error::invalid(format!(
            "the model classifies only {:.1}% of the clean data correctly (chance is {:.1}%): check the data and the input normalisation (--mean/--std) before scanning",
            100.0 * inv_acc,
            100.0 * chance
        )));
    }
    let mut pools = vec![vec![]; classes];
    for (t, pool) in pools.iter_mut().enumerate() {
        *pool = (0..inv.len()).filter(|&i| inv.labels[i] != t).collect();
    }
    // The untargeted goal draws from every class.
    pools.push((0..inv.len()).collect());
    if inv.len() < cfg.per_class || candidates.iter().any(|&t| pools[t].is_empty()) {
        return Err(Error::invalid(format!(
            "the clean set has {} correctly classified samples; the scan needs at least {} (one batch), from more than one class",
            inv.len(),
            cfg.per_class
        )));
    }

    // Images live in [0, 1]; audio models are inverted in spectrogram space, whose values go
    // beyond 1: triggers stay within what the clean inputs span.
    let range = inv.images.iter().fold([0f32, 1f32], |[lo, hi], &v| [lo.min(v), hi.max(v)]);
    if audio {
        notes.push(format!("audio: triggers are reconstructed on the spectrogram (values {:.2} to {:.2}), not on the waveform; they are applied to spectrograms", range[0], range[1]));
    }
    Ok(CleanSets { inv, hold, pools, range, hold_accuracy: hold_acc })
}

/// Every class some family scored, in order.
fn scored_classes(families: &[FamilyResult]) -> Vec<usize> {
    let mut classes: Vec<usize> = families.iter().flat_map(|f| f.classes.iter().map(|c| c.class)).collect();
    classes.sort_unstable();
    classes.dedup();
    classes
}

/// A class's evidence: its largest per-family index with that family, and the indices
/// combined as independent z-scores (Stouffer: the sum over the square root of their number)
/// when more than one family scored it. `None`: no family gave the class an index.
fn class_evidence(families: &[FamilyResult], class: usize) -> Option<(f64, Family, Option<f64>)> {
    let scored: Vec<(f64, Family)> = families.iter().filter_map(|f| f.classes.iter().find(|c| c.class == class).and_then(|c| c.index).map(|i| (i, f.family))).collect();
    let &(best, family) = scored.iter().max_by(|a, b| a.0.total_cmp(&b.0))?;
    let combined = (scored.len() > 1).then(|| scored.iter().map(|s| s.0).sum::<f64>() / (scored.len() as f64).sqrt());
    Some((best, family, combined))
}

/// The verdict from the families' first-pass indices and refined finalists: a class is a
/// suspect when its index (the largest over the families, or their combination) reaches
/// `suspect` or a refined trigger of it is at most `max_control_ratio` of the controls', and a
/// target when a refined trigger of it, in either family, works on held-out data with an index
/// at `flag` or that small a size. A class in `wide` (maximum-margin index at
/// `margin_flag`) is a suspect, and a target when a refined trigger of it works on held-out
/// data and its index reaches `suspect`. Suspects come out most likely first (targets, then by
/// index).
///
/// Without a target class, a family's untargeted trigger at most `untargeted_ratio` of its
/// smallest refined class's is evidence of an untargeted or all-to-all backdoor, and makes the
/// model "backdoored" when it misleads held-out data.
pub fn decide(families: &[FamilyResult], wide: &[usize], th: &Thresholds) -> (Verdict, Vec<Suspect>, Option<UntargetedFinding>) {
    let mut suspects: Vec<Suspect> = vec![];
    for class in scored_classes(families) {
        let Some((best, index_family, combined_index)) = class_evidence(families, class) else { continue };
        let index = combined_index.map_or(best, |c| c.max(best));
        let finalists: Vec<(Family, &Finalist)> = families.iter().flat_map(|f| f.finalists.iter().filter(|x| x.class == class && !x.control).map(move |x| (f.family, x))).collect();
        let tiny = |x: &Finalist| x.control_ratio.is_some_and(|r| r <= th.max_control_ratio);
        let wide_margin = wide.contains(&class);
        // A wide margin alone is no proof: a clean synthetic ResNet-18 (docs/detection.md) has
        // one class at margin index 16.9 whose trigger is of ordinary size (index 0.44). It
        // confirms a class whose trigger size is itself at the suspect level.
        let confirms = |x: &Finalist| x.held_out.holdout_asr.is_some_and(|a| a >= th.confirm_asr) && (index >= th.flag || tiny(x) || (wide_margin && index >= th.suspect));
        let confirming = finalists.iter().find(|(_, x)| confirms(x));
        // A suspect: an outlier at equal budgets, or a refined trigger far below the controls'
        // (a patch backdoor's first-pass mask can still be hidden in haze on large inputs).
        if index < th.suspect && !finalists.iter().any(|(_, x)| tiny(x)) && !wide_margin {
            continue;
        }
        let (family, fin) = match confirming.or_else(|| finalists.iter().find(|(f, _)| *f == index_family)) {
            Some((f, x)) => (*f, Some(*x)),
            None => (index_family, None),
        };
        suspects.push(Suspect {
            class,
            family,
            index,
            index_family,
            combined_index,
            holdout_asr: fin.and_then(|x| x.held_out.holdout_asr),
            control_ratio: fin.and_then(|x| x.control_ratio),
            wide_margin,
            confirmed: confirming.is_some(),
        });
    }
    suspects.sort_by(|a, b| (b.confirmed, b.index).partial_cmp(&(a.confirmed, a.index)).expect("finite indices"));
    let untargeted = families
        .iter()
        .filter_map(|f| {
            let u = f.untargeted.as_ref()?;
            let ratio = u.refined_ratio.filter(|&r| r <= th.untargeted_ratio)?;
            let holdout_asr = u.held_out.holdout_asr;
            Some(UntargetedFinding { family: f.family, refined_ratio: ratio, holdout_asr, confirmed: holdout_asr.is_some_and(|a| a >= th.confirm_asr) })
        })
        .max_by(|a, b| (a.confirmed, -a.refined_ratio).partial_cmp(&(b.confirmed, -b.refined_ratio)).expect("finite ratios"));
    let verdict = if suspects.iter().any(|s| s.confirmed) || untargeted.as_ref().is_some_and(|u| u.confirmed) {
        Verdict::Backdoored
    } else if suspects.is_empty() && untargeted.is_none() {
        Verdict::NoEvidence
    } else {
        Verdict::Inconclusive
    };
    (verdict, suspects, untargeted)
}

fn norm_tensors(norm: &Normalization, c: usize, device: &Device) -> (Tensor<4>, Tensor<4>) {
    let mean = Tensor::from_data(TensorData::new(norm.mean.clone(), [1, c, 1, 1]), device);
    let std = Tensor::from_data(TensorData::new(norm.std.clone(), [1, c, 1, 1]), device);
    (mean, std)
}

/// A reconstructed trigger on held-out inputs (all correctly classified when clean): towards
/// `target`, the share of other classes' inputs sent to it; for the untargeted trigger
/// (`None`), the share of all inputs sent away from their class. Rate, Wilson interval, samples.
pub fn holdout_success(file: &ModelFile, hold: &Split, trigger: &Trigger, target: Option<usize>, shape: [usize; 3], device: &Device) -> Result<HeldOut> {
    let idx: Vec<usize> = (0..hold.len()).filter(|&i| Some(hold.labels[i]) != target).collect();
    if idx.is_empty() {
        return Ok(HeldOut::default());
    }
    let stamped = trigger.apply_split(hold, Some(&idx), shape, Use::Test, 0)?;
    let preds = predict(&file.model, &stamped, &file.info.normalization, device, 256);
    let hits = preds.iter().zip(&stamped.labels).filter(|&(&p, &y)| target.map_or(p != y, |t| p == t)).count();
    Ok(HeldOut { holdout_asr: Some(hits as f64 / idx.len() as f64), holdout_asr_ci95: wilson(hits, idx.len()), holdout_samples: idx.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_counts_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }

    fn family(family: Family, indices: &[f64], finalists: Vec<Finalist>) -> FamilyResult {
        let classes = indices.iter().enumerate().map(|(class, &i)| ClassResult { class, size: Some(1.0), best_batch_asr: 1.0, index: Some(i) }).collect();
        FamilyResult { family, size_unit: family.size_unit(), classes, untargeted: None, nc_anomaly_index: None, finalists }
    }

    fn finalist(class: usize, ratio: f64, asr: f64) -> Finalist {
        Finalist { class, control: false, size: Some(ratio), control_ratio: Some(ratio), held_out: HeldOut { holdout_asr: Some(asr), holdout_asr_ci95: [0.0, 1.0], holdout_samples: 100 }, trigger: None }
    }

    #[test]
    fn a_target_needs_a_working_trigger_and_a_high_index_or_a_tiny_refined_one() {
        let th = Thresholds::default();
        // A high index in one family, confirmed by the other family's working trigger.
        let f = [family(Family::Patch, &[0.5, 1.0, 2.0], vec![finalist(2, 0.9, 0.95)]), family(Family::Additive, &[0.2, 6.0, 0.1], vec![finalist(1, 0.6, 0.97)])];
        let (v, s, _) = decide(&f, &[], &th);
        assert_eq!((v, s.iter().map(|s| s.class).collect::<Vec<_>>()), (Verdict::Backdoored, vec![1]));
        assert_eq!((s[0].index_family, s[0].family), (Family::Additive, Family::Additive));
        // The same index with a trigger that fails on held-out data: a suspect, not a target.
        let f = [family(Family::Additive, &[0.2, 6.0, 0.1], vec![finalist(1, 0.6, 0.5)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::Inconclusive);
        // Below the flag, a refined trigger far smaller than the controls' confirms; an ordinary
        // one does not.
        let f = [family(Family::Patch, &[3.5, 0.0, 0.1], vec![finalist(0, 0.1, 0.95)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::Backdoored);
        let f = [family(Family::Patch, &[3.5, 0.0, 0.1], vec![finalist(0, 0.45, 0.95)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::Inconclusive);
        let f = [family(Family::Patch, &[2.0, 0.0, 0.1], vec![finalist(0, 0.1, 0.95)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::Backdoored);
        let f = [family(Family::Patch, &[2.0, 0.0, 0.1], vec![finalist(0, 0.45, 0.95)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::NoEvidence);
        // A tiny refined trigger that fails on held-out data: inconclusive.
        let f = [family(Family::Patch, &[2.0, 0.0, 0.1], vec![finalist(0, 0.1, 0.5)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::Inconclusive);
        // Below the flag in each family, the same class in both: the evidence adds up
        // ((4.0 + 3.8) / sqrt 2 = 5.5), and a working trigger makes it a target.
        let f = [family(Family::Patch, &[4.0, 0.2, 0.1], vec![finalist(0, 0.4, 0.95)]), family(Family::Additive, &[3.8, 0.1, 0.3], vec![finalist(0, 0.5, 0.9)])];
        let (v, s, _) = decide(&f, &[], &th);
        assert_eq!((v, s[0].class), (Verdict::Backdoored, 0));
        assert!((s[0].index - 7.8 / 2f64.sqrt()).abs() < 1e-9 && s[0].combined_index == Some(s[0].index));
        // Different classes in the two families do not add up.
        let f = [family(Family::Patch, &[4.0, 0.2, 0.1], vec![finalist(0, 0.4, 0.95)]), family(Family::Additive, &[0.1, 3.8, 0.3], vec![finalist(1, 0.5, 0.9)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::Inconclusive);
    }

    #[test]
    fn the_printed_rule_gives_the_thresholds_in_use() {
        let rule = Thresholds { flag: 7.5, margin_flag: 9.5, suspect: 2.5, max_control_ratio: 0.15, ..Thresholds::default() }.rule();
        for v in ["7.5 or more", "0.15 of the controls'", "9.5 or more with an index of at least 2.5", "90%"] {
            assert!(rule.contains(v), "{v:?} not in {rule:?}");
        }
    }

    #[test]
    fn a_margin_at_its_flag_makes_a_suspect_that_a_working_trigger_of_suspect_size_confirms() {
        let th = Thresholds::default();
        let f = [family(Family::Patch, &[2.0, 0.0, 0.1], vec![finalist(0, 0.6, 0.95)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::NoEvidence, "an ordinary size, an ordinary margin");
        // A wide margin with a working trigger of ordinary size (the clean ResNet-18's class 7):
        // a suspect, not a target.
        let (v, s, _) = decide(&f, &[0], &th);
        assert_eq!((v, s[0].class, s[0].wide_margin), (Verdict::Inconclusive, 0, true));
        // With its trigger size at the suspect level, below the flag: a target.
        let f = [family(Family::Patch, &[3.2, 0.0, 0.1], vec![finalist(0, 0.6, 0.95)])];
        assert_eq!(decide(&f, &[], &th).0, Verdict::Inconclusive, "the index alone, below the flag");
        let (v, s, _) = decide(&f, &[0], &th);
        assert_eq!((v, s[0].class, s[0].wide_margin), (Verdict::Backdoored, 0, true));
        let weak = [family(Family::Patch, &[2.0, 0.0, 0.1], vec![finalist(0, 0.6, 0.5)])];
        assert_eq!(decide(&weak, &[0], &th).0, Verdict::Inconclusive, "a wide margin whose trigger fails: a suspect");
        assert_eq!(decide(&f, &[1], &th).0, Verdict::Inconclusive, "a wide margin for a class without a working trigger");
    }

    #[test]
    fn an_untargeted_trigger_no_larger_than_the_smallest_class_makes_a_backdoor_without_a_target() {
        let th = Thresholds::default();
        let with = |ratio: f64, asr: f64| {
            let mut f = family(Family::Patch, &[0.5, 1.0, 2.0], vec![finalist(2, 0.9, 0.95)]);
            f.untargeted = Some(UntargetedResult { size: Some(1.0), refined_size: Some(ratio), refined_ratio: Some(ratio), held_out: HeldOut { holdout_asr: Some(asr), holdout_asr_ci95: [0.0, 1.0], holdout_samples: 100 }, trigger: None });
            decide(&[f], &[], &th)
        };
        let (v, s, u) = with(0.4, 0.95);
        assert_eq!((v, s.len()), (Verdict::Backdoored, 0), "no target class, yet backdoored");
        assert!(u.is_some_and(|u| u.confirmed && u.family == Family::Patch));
        // Small but not misleading held-out data: inconclusive. Clean-sized: no evidence.
        assert_eq!(with(0.4, 0.5).0, Verdict::Inconclusive);
        let (v, _, u) = with(1.8, 0.95);
        assert_eq!((v, u.is_none()), (Verdict::NoEvidence, true));
    }

    #[test]
    fn a_reinversion_starts_exactly_where_the_trigger_is() {
        let (shape, range) = ([2, 2, 3], [-1.0f32, 3.0]);
        let params: Vec<f32> = (0..6 + 12).map(|i| (i as f32 - 9.0) / 3.0).collect();
        let back = params_of(Family::Patch, shape, range, &trigger_of(Family::Patch, shape, range, &params)).unwrap();
        assert!(params.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-3), "{params:?} vs {back:?}");
        let additive = trigger_of(Family::Additive, shape, range, &params[..12]);
        assert_eq!(params_of(Family::Additive, shape, range, &additive).unwrap(), params[..12].to_vec());
        // The wrong family or another input shape is refused.
        assert!(params_of(Family::Patch, shape, range, &additive).is_err());
        assert!(params_of(Family::Additive, [2, 3, 2], range, &additive).is_err());
    }

    #[test]
    fn a_small_outlier_scores_high_and_a_spread_out_set_does_not() {
        // The checkerboard case that Neural Cleanse's raw MAD misses: 7.2 against 27.5 next.
        let sizes = [Some(7.2), Some(27.5), Some(30.0), Some(33.0), Some(29.0), Some(41.0), Some(35.0), Some(31.0), Some(38.0), Some(28.0)];
        let idx = outlier_indices(&sizes);
        assert!(idx[0].unwrap() > FLAG_INDEX, "{:?}", idx[0]);
        assert!(idx[1..].iter().all(|i| i.unwrap() < SUSPECT_INDEX), "{idx:?}");
        // A clean-looking spread: nobody stands out.
        let clean = [Some(20.0), Some(27.5), Some(30.0), Some(33.0), Some(24.0), Some(41.0), Some(35.0), Some(31.0), Some(38.0), Some(28.0)];
        assert!(outlier_indices(&clean).iter().all(|i| i.unwrap() < SUSPECT_INDEX));
        // Never-reached classes get no index and count as large.
        let with_none = [Some(5.0), None, Some(30.0), Some(33.0), Some(29.0)];
        let idx = outlier_indices(&with_none);
        assert!(idx[1].is_none() && idx[0].unwrap() > idx[2].unwrap());
        assert!(nc_anomaly_index(&sizes).unwrap() > 0.0);
    }
}
