//! Training: SGD with momentum or Adam, weight decay, step or cosine learning-rate schedule,
//! seeded shuffling, early stopping on validation accuracy, best-on-validation weights kept.

use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::backend::adam::FusedAdam;
use crate::data::{Normalization, Split, batch};
use crate::error::{Error, Result};
use crate::metrics::{ClassReport, argmax, predict};
use crate::model::Model;
use crate::progress::{EpochStats, Progress};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

crate::choice::choices!(OptimizerKind {
    Sgd => "sgd", "stochastic gradient descent with momentum";
    Adam => "adam", "Adam";
});

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Schedule {
    Constant,
    /// Multiply the rate by `gamma` every `every` epochs.
    Step { every: usize, gamma: f64 },
    /// Cosine decay from the initial rate to zero over all epochs.
    Cosine,
}

impl Schedule {
    pub fn rate(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64).cos()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    /// SGD momentum (PyTorch semantics: no dampening).
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    pub seed: u64,
    /// Stop after this many epochs without a better validation accuracy.
    pub patience: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            lr: 1e-3,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            seed: 0,
            patience: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::invalid("epochs and batch size must be positive"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(format!("learning rate {} must be positive", self.lr)));
        }
        if !(0.0..1.0).contains(&self.momentum) || !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid("momentum must be in [0, 1) and weight decay non-negative"));
        }
        Ok(())
    }
}

pub struct TrainOutcome {
    /// The weights of the epoch with the best validation accuracy.
    pub model: Model,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub history: Vec<EpochStats>,
}

/// What the training loop reads: splits, the input normalisation, and where to run.
pub struct TrainData<'a> {
    pub train: &'a Split,
    pub val: &'a Split,
    pub normalization: &'a Normalization,
}

/// Mean cross-entropy of `logits` against integer `labels`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let picked = log_softmax(logits, 1).gather(1, labels.reshape([n, 1]));
    picked.mean().neg()
}

/// What a defense adds to the training loop: an extra loss term, and a projection of the
/// weights after every optimiser step (feature-shift tuning uses both).
pub trait TrainHooks {
    /// Added to the batch's cross-entropy (`model` is the autodiff model being trained).
    fn extra_loss(&self, _model: &Model) -> Option<Tensor<1>> {
        None
    }
    fn after_step(&self, model: Model) -> Model {
        model
    }
}

/// Plain training.
pub struct NoHooks;
impl TrainHooks for NoHooks {}

/// Trains `model` on `data.train`, choosing the epoch by accuracy on `data.val`. `device` must
/// be an autodiff device; evaluation runs on its plain counterpart.
pub fn train(model: Model, data: &TrainData, cfg: &TrainConfig, device: &Device, progress: &mut dyn Progress) -> Result<TrainOutcome> {
    train_with(model, data, cfg, &NoHooks, device, progress)
}

/// [`train`] with a defense's extra loss term and post-step projection.
pub fn train_with(model: Model, data: &TrainData, cfg: &TrainConfig, hooks: &dyn TrainHooks, device: &Device, progress: &mut dyn Progress) -> Result<TrainOutcome> {
    cfg.validate()?;
    if data.train.is_empty() {
        return Err(Error::invalid("the training split is empty"));
    }
    // The epoch is chosen on validation accuracy; training accuracy in its place would be a
    // number under the wrong name (and would pick the most overfitted epoch).
    if data.val.is_empty() {
        return Err(Error::invalid("the validation split is empty: the kept epoch is chosen on clean validation accuracy; give a validation fraction above 0 (--val-fraction) or data with more samples per class"));
    }
    let eval_device = device.clone().without_autodiff();
    let mut optim = match cfg.optimizer {
        OptimizerKind::Sgd => {
            let mut c = SgdConfig::new();
            if cfg.momentum > 0.0 {
                c = c.with_momentum(Some(MomentumConfig::new().with_momentum(cfg.momentum).with_dampening(0.0)));
            }
            if cfg.weight_decay > 0.0 {
                c = c.with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay as f32)));
            }
            c.init()
        }
        OptimizerKind::Adam => FusedAdam::init(cfg.weight_decay as f32),
    };
    let shape = model.graph.input_shape;
    let classes = model.num_classes();
    let mut model = model;
    let mut rng = Rng::new(cfg.seed ^ 0x7EA1);
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    let mut best: Option<(f64, usize, Model)> = None;
    let mut history = Vec::new();
    let mut since_best = 0;
    progress.training(cfg.epochs);
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let lr = cfg.schedule.rate(cfg.lr, epoch, cfg.epochs);
        rng.shuffle(&mut order);
        let batches: Vec<&[usize]> = order.chunks(cfg.batch_size).collect();
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for (b, idx) in batches.iter().enumerate() {
            // A batch of one gives BatchNorm no variance to normalise by; skip such a tail.
            if idx.len() < 2 && batches.len() > 1 {
                continue;
            }
            let (x, y) = batch(data.train, idx, shape, data.normalization, device);
            let logits = model.forward_train(x, &mut rng);
            let preds = argmax(logits.clone().detach());
            correct += preds.iter().zip(idx.iter()).filter(|(p, i)| **p == data.train.labels[**i]).count();
            let loss = match hooks.extra_loss(&model) {
                Some(extra) => cross_entropy(logits, y) + extra,
                None => cross_entropy(logits, y),
            };
            let loss_value = loss.clone().detach().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                return Err(Error::invalid(format!("training diverged at epoch {} (loss {loss_value}); try a smaller learning rate", epoch + 1)));
            }
            loss_sum += loss_value * idx.len() as f64;
            seen += idx.len();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = hooks.after_step(optim.step(lr, model, grads));
            progress.batch(epoch, b + 1, batches.len(), loss_sum / seen as f64, correct as f64 / seen as f64);
        }
        let preds = predict(&model, data.val, data.normalization, &eval_device, 256);
        let val_accuracy = ClassReport::new(&preds, &data.val.labels, classes).accuracy;
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        };
        progress.epoch(&stats);
        history.push(stats);
        if best.as_ref().is_none_or(|(acc, _, _)| val_accuracy > *acc) {
            // `valid()`, not `clone()`: a clone shares BatchNorm's running statistics with the
            // model still training, so later epochs would leak into the kept snapshot.
            best = Some((val_accuracy, epoch + 1, model.valid()));
            since_best = 0;
        } else {
            since_best += 1;
            if cfg.patience.is_some_and(|p| since_best >= p) {
                break;
            }
        }
    }
    let (best_val_accuracy, best_epoch, best_model) = best.expect("at least one epoch ran");
    Ok(TrainOutcome { model: best_model, best_epoch, best_val_accuracy, history })
}

/// Everything a `train` run produces: the model file (weights, graph, provenance) and the
/// per-epoch history.
pub struct Trained {
    pub file: crate::model::ModelFile,
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub history: Vec<EpochStats>,
}

/// Builds `arch` for `dataset`, trains it, and packages the best-on-validation weights with
/// the metadata evaluation needs.
pub fn train_new(arch: &str, dataset: &crate::data::Dataset, cfg: &TrainConfig, device: &Device, progress: &mut dyn Progress) -> Result<Trained> {
    let graph = crate::model::arch::build(arch, dataset.shape, dataset.classes.len())?;
    let model = Model::init(graph, cfg.seed, device)?;
    let data = TrainData { train: &dataset.train, val: &dataset.val, normalization: &dataset.normalization };
    let outcome = train(model, &data, cfg, device, progress)?;
    let mut extra = std::collections::BTreeMap::new();
    extra.insert("training".to_string(), serde_json::to_value(cfg).expect("config serialises"));
    extra.insert("dataset".to_string(), serde_json::Value::String(dataset.spec.to_string()));
    extra.insert("best_epoch".to_string(), outcome.best_epoch.into());
    extra.insert("best_val_accuracy".to_string(), outcome.best_val_accuracy.into());
    let info = crate::model::ModelInfo {
        arch: arch.to_string(),
        data_kind: Some(dataset.spec.kind),
        classes: dataset.classes.clone(),
        normalization: dataset.normalization.clone(),
        backdoor: None,
        extra,
        onnx: None,
    };
    Ok(Trained {
        file: crate::model::ModelFile { model: outcome.model, info },
        best_epoch: outcome.best_epoch,
        best_val_accuracy: outcome.best_val_accuracy,
        history: outcome.history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.rate(0.1, 5, 10), 0.1);
        let s = Schedule::Step { every: 2, gamma: 0.5 };
        assert_eq!(s.rate(1.0, 0, 10), 1.0);
        assert_eq!(s.rate(1.0, 3, 10), 0.5);
        assert_eq!(s.rate(1.0, 4, 10), 0.25);
        assert!((Schedule::Cosine.rate(1.0, 5, 10) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Cosine.rate(1.0, 0, 10), 1.0);
    }
}
