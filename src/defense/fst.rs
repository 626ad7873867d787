//! Feature-shift tuning (Min et al., NeurIPS 2023).
//!
//! Plain fine-tuning with a small learning rate barely moves a backdoored model: the
//! classifier head keeps reading the backdoor features, so the features have no reason to
//! change. FST re-initialises the last linear layer and fine-tunes every weight with a penalty
//! on the head's alignment with its old weights, `CE + α ⟨W, W₀⟩`, rescaling `W` to `‖W₀‖`
//! after every step: the head is pushed away from the backdoored one, and the features shift
//! with it. The epoch (and, when the default misses the budget, a smaller α) is chosen on
//! clean validation accuracy.
//!
//! Defaults, from our measurements (README, *Which defense?*): the penalty can reach
//! `α ‖W₀‖²` in size, and the authors' α (0.2 for 10 classes, 0.1 for GTSRB) let it outweigh
//! the cross-entropy on heads with a large norm. On signnet/GTSRB (‖W₀‖² = 125) α = 0.1 cut
//! clean validation accuracy from 0.983 to 0.79; LeNet/MNIST (‖W₀‖² = 21) lost 3.4 test points
//! at 0.2 and 1.4 at 0.06. So α is capped at `1.25 / ‖W₀‖²`: the penalty never exceeds 1.25
//! nats. A head for many classes also needs longer to relearn them: 20 epochs beyond 10
//! classes (signnet/GTSRB at α 0.01: 3.9 points lost after 10 epochs, 1.7 after 20).

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::{DefenseConfig, defender_split};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::graph::Op;
use crate::rng::Rng;
use crate::train::{OptimizerKind, Schedule, TrainConfig, TrainData, TrainHooks, train_with};
use crate::progress::Progress;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FstConfig {
    /// Weight of the alignment penalty; `None` picks it from the number of classes and the
    /// head's norm ([`FstConfig::default_alpha`]).
    pub alpha: Option<f64>,
    /// `None`: 10 epochs up to 10 classes, 20 beyond ([`FstConfig::default_epochs`]).
    pub epochs: Option<usize>,
    /// SGD learning rate (momentum 0.9, cosine schedule).
    pub lr: f64,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for FstConfig {
    fn default() -> Self {
        FstConfig { alpha: None, epochs: None, lr: 0.01, batch_size: 128, seed: 0 }
    }
}

/// The largest size the alignment penalty may reach by default, in nats.
const PENALTY_CAP: f64 = 1.25;

impl FstConfig {
    /// The authors' 0.2 (CIFAR-10) for up to 10 classes and 0.1 (GTSRB) beyond, capped so that
    /// the penalty `α ⟨W, W₀⟩` cannot exceed 1.25 nats (`‖W‖ = ‖W₀‖` throughout).
    pub fn default_alpha(classes: usize, head_norm_sq: f64) -> f64 {
        let authors: f64 = if classes <= 10 { 0.2 } else { 0.1 };
        if head_norm_sq > 0.0 { authors.min(PENALTY_CAP / head_norm_sq) } else { authors }
    }

    pub fn default_epochs(classes: usize) -> usize {
        if classes <= 10 { 10 } else { 20 }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(a) = self.alpha
            && !(a.is_finite() && a >= 0.0)
        {
            return Err(Error::invalid(format!("FST alpha {a} must be a non-negative number")));
        }
        if self.epochs == Some(0) || self.batch_size == 0 || !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("FST epochs, batch size and learning rate must be positive"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FstReport {
    /// The classifier head that was re-initialised.
    pub head: String,
    pub alpha: f64,
    /// Every α run, with the best clean validation accuracy it reached.
    pub tried: Vec<(f64, f64)>,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub lr: f64,
    /// ‖W₀‖², which caps the default α.
    pub head_norm_sq: f64,
    /// Every epoch of the chosen run (clean validation accuracy per epoch).
    pub history: Vec<crate::progress::EpochStats>,
}

/// The alignment penalty and the norm projection, on the head's weight.
struct FstHooks {
    head: usize,
    /// The suspect model's head weight (plain device: a constant).
    w0: Tensor<2>,
    norm0: f64,
    alpha: f64,
}

fn head_weight(model: &Model, head: usize) -> Tensor<2> {
    model.layers[head].linear.as_ref().expect("the head is a linear layer").weight.val()
}

fn frobenius(w: Tensor<2>) -> f64 {
    w.powf_scalar(2.0).sum().sqrt().into_scalar::<f32>() as f64
}

impl TrainHooks for FstHooks {
    fn extra_loss(&self, model: &Model) -> Option<Tensor<1>> {
        (self.alpha > 0.0).then(|| (head_weight(model, self.head) * self.w0.clone()).sum().mul_scalar(self.alpha))
    }

    fn after_step(&self, mut model: Model) -> Model {
        let l = model.layers[self.head].linear.as_mut().expect("the head is a linear layer");
        let norm = frobenius(l.weight.val().without_autodiff());
        if norm > 0.0 {
            let s = self.norm0 / norm;
            // A new leaf with the same parameter id, so the optimiser's momentum carries on.
            l.weight = l.weight.clone().map(|w| {
                let autodiff = w.is_autodiff();
                let scaled = w.without_autodiff().mul_scalar(s);
                if autodiff { scaled.autodiff().require_grad() } else { scaled }
            });
        }
        model
    }
}

/// The head: the linear layer that produces the logits.
fn find_head(model: &Model) -> Result<usize> {
    let out = model.graph.output;
    match model.graph.nodes[out].op {
        Op::Linear { .. } => Ok(out),
        _ => Err(Error::invalid(format!("FST re-initialises the classifier head, but the model's output {:?} is not a linear layer", model.graph.nodes[out].name))),
    }
}

/// The model with its head re-initialised as PyTorch's `nn.Linear` does (weights and bias
/// uniform in ±1/√fan_in), from our seeded generator.
fn reinit_head(mut model: Model, head: usize, seed: u64) -> Model {
    let mut rng = Rng::new(seed ^ 0xF57);
    let l = model.layers[head].linear.as_mut().expect("the head is a linear layer");
    let w = l.weight.val();
    let device = w.device();
    let [out, fan_in] = w.dims();
    let bound = 1.0 / (fan_in as f64).sqrt();
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect() };
    l.weight = l.weight.clone().map(|_| Tensor::from_data(TensorData::new(draw(out * fan_in), [out, fan_in]), &device));
    if let Some(b) = l.bias.as_mut() {
        *b = b.clone().map(|_| Tensor::from_data(TensorData::new(draw(out), [out]), &device));
    }
    model
}

/// Feature-shift tuning of `model` on the defender's clean data. `val_before` is the suspect
/// model's clean validation accuracy: when the default α costs more than the budget, a smaller
/// one is tried.
pub(super) fn tune(model: Model, ds: &Dataset, cfg: &DefenseConfig, val_before: f64, device: &Device, progress: &mut dyn Progress, notes: &mut Vec<String>) -> Result<(Model, FstReport)> {
    let c = &cfg.fst;
    c.validate()?;
    let model = model.valid();
    let head = find_head(&model)?;
    let classes = model.num_classes();
    let clean = defender_split(&ds.train, cfg.clean_fraction, c.seed)?;
    let data = TrainData { train: &clean, val: &ds.val, normalization: &ds.normalization };
    let w0 = head_weight(&model, head);
    let norm0 = frobenius(w0.clone());
    let epochs = c.epochs.unwrap_or_else(|| FstConfig::default_epochs(classes));
    let train_cfg = TrainConfig {
        epochs,
        batch_size: c.batch_size,
        lr: c.lr,
        optimizer: OptimizerKind::Sgd,
        momentum: 0.9,
        weight_decay: 0.0,
        schedule: Schedule::Cosine,
        seed: c.seed,
        patience: None,
    };
    let alphas = match c.alpha {
        Some(a) => vec![a],
        // The default, then half of it, when the default misses the budget.
        None => {
            let a = FstConfig::default_alpha(classes, norm0 * norm0);
            vec![a, a / 2.0]
        }
    };
    let mut tried = vec![];
    let mut last = None;
    for &alpha in &alphas {
        progress.phase(&format!("FST: re-initialised {:?}, fine-tuning every layer with alpha {alpha:.4} for {epochs} epochs on {} clean samples", model.graph.nodes[head].name, clean.len()), 0);
        let hooks = FstHooks { head, w0: w0.clone(), norm0, alpha };
        let start = reinit_head(model.clone(), head, c.seed).train();
        let outcome = train_with(start, &data, &train_cfg, &hooks, device, progress)?;
        tried.push((alpha, outcome.best_val_accuracy));
        let fits = cfg.budget.allows(val_before, outcome.best_val_accuracy);
        last = Some((alpha, outcome));
        if fits {
            break;
        }
        if c.alpha.is_none() && alpha != *alphas.last().expect("non-empty") {
            notes.push(format!("fst: alpha {alpha:.4} left clean validation accuracy outside the budget ({val_before:.4} -> {:.4}); trying a smaller alpha", tried.last().expect("pushed").1));
        }
    }
    let (alpha, outcome) = last.expect("at least one alpha");
    let report = FstReport {
        head: model.graph.nodes[head].name.clone(),
        alpha,
        tried,
        epochs_run: outcome.history.len(),
        best_epoch: outcome.best_epoch,
        best_val_accuracy: outcome.best_val_accuracy,
        lr: c.lr,
        head_norm_sq: norm0 * norm0,
        history: outcome.history.clone(),
    };
    Ok((outcome.model, report))
}
