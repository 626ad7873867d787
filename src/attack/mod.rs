//! Building backdoored models the way the paper's attackers did: data poisoning (BadNets,
//! blended, sunglasses, audio tone) and the pruning-aware attack.

use std::borrow::Cow;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::metrics::{AttackSuccess, ClassReport, attack_success, predict_counting};
use crate::model::graph::Op;
use crate::model::{Model, ModelFile};
use crate::prune::{self, PrefixCache};
use crate::train::{TrainConfig, TrainData, Trained, train, train_new};
use crate::progress::Progress;
use crate::trigger::poison::{Target, poison};
use crate::trigger::{Backdoor, PruningAwareRecord, Trigger, Triggered};

#[derive(Clone, Debug)]
pub struct AttackConfig {
    pub trigger: Trigger,
    pub target: Target,
    pub poison_rate: f64,
    /// Seed of the choice of poisoned samples (and of random trigger positions).
    pub poison_seed: u64,
    /// Clean-label: trigger only target-class samples and keep their labels (`poison_rate` is
    /// then the share of the target class).
    pub clean_label: bool,
    pub train: TrainConfig,
}

/// How many channels the pruning-aware attacker prunes before retraining.
#[derive(Clone, Debug)]
pub struct PruningAwareConfig {
    /// Prune this fraction of the layer; when `None`, prune while clean validation accuracy
    /// stays within `max_acc_drop` of the unpruned model (the defender's own rule).
    pub fraction: Option<f64>,
    pub max_acc_drop: f64,
    /// After re-instating, decoy pre-activations are at most `-margin` on all clean training
    /// inputs: the bias is lowered by (max pre-activation + margin).
    pub margin: f32,
    pub layer: Option<String>,
}

impl Default for PruningAwareConfig {
    fn default() -> Self {
        PruningAwareConfig { fraction: None, max_acc_drop: 0.04, margin: 1.0, layer: None }
    }
}

fn poisoned_train(ds: &Dataset, cfg: &AttackConfig) -> Result<(Split, crate::trigger::poison::PoisonRecord)> {
    poison(&ds.train, ds.shape, &cfg.trigger, cfg.target, cfg.poison_rate, ds.classes.len(), cfg.poison_seed, cfg.clean_label)
}

/// The baseline attack: train `arch` on a poisoned copy of the training set. Validation stays
/// clean (the attacker's model must look good on the user's clean data).
pub fn backdoor(arch: &str, ds: &Dataset, cfg: &AttackConfig, device: &Device, progress: &mut dyn Progress) -> Result<Trained> {
    let (train_split, record) = poisoned_train(ds, cfg)?;
    let poisoned = Dataset { train: train_split, ..ds.clone() };
    let mut trained = train_new(arch, &poisoned, &cfg.train, device, progress)?;
    trained.file.info.backdoor = Some(Backdoor { trigger: cfg.trigger.clone(), target: cfg.target, poison: record, pruning_aware: None });
    Ok(trained)
}

/// Walks back from the prune site through activations and pooling to the node whose per-channel
/// bias sets the site's pre-activation: a BatchNorm (its shift) or a convolution (its bias).
fn bias_node(model: &Model, site: usize) -> Result<(usize, usize)> {
    let g = &model.graph;
    let mut i = site;
    let mut pre = None;
    loop {
        match &g.nodes[i].op {
            op if op.keeps_zero() && !matches!(op, Op::GlobalAvgPool) => {
                if op.is_activation() && pre.is_none() {
                    pre = Some(g.nodes[i].inputs[0]);
                }
                i = g.nodes[i].inputs[0];
            }
            Op::BatchNorm { .. } => return Ok((i, pre.unwrap_or(i))),
            Op::Conv2d { bias: true, .. } => return Ok((i, pre.unwrap_or(i))),
            _ => {
                return Err(Error::invalid(format!(
                    "cannot find a bias for the channels of {:?} (needs a BatchNorm or a conv with bias before it)",
                    g.nodes[site].name
                )));
            }
        }
    }
}

/// Per-channel maximum of node `node`'s output over `split` (evaluation mode).
fn channel_max(model: &Model, split: &Split, ds: &Dataset, node: usize, device: &Device) -> Result<Vec<f32>> {
    let model = model.valid();
    let order: Vec<usize> = (0..split.len()).collect();
    let mut max: Vec<f32> = Vec::new();
    for chunk in order.chunks(256) {
        let (x, _) = crate::data::batch(split, chunk, ds.shape, &ds.normalization, device);
        let a = model.activations(x, &[node]).pop().expect("one").into_map();
        let m = a.max_dim(3).max_dim(2).max_dim(0);
        let v = m.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::model(format!("{e:?}")))?;
        if max.is_empty() {
            max = v;
        } else {
            for (a, b) in max.iter_mut().zip(v) {
                *a = a.max(b);
            }
        }
    }
    Ok(max)
}

/// The pruning-aware attack (paper §4):
/// (a) train on clean data; (b) prune the last conv layer's channels that are dormant on clean
/// data, least active first; (c) retrain the pruned network on poisoned data, so the backdoor
/// must live in the clean-active channels; (d) re-instate the pruned channels with their
/// weights but a lowered bias, so they stay dormant decoys that a pruning defender removes
/// first, to no effect.
///
/// Where the paper is silent we chose: the attacker ranks on its clean validation split; "how
/// many" defaults to the defender's own rule (the most channels within a 4% validation drop);
/// the bias drop makes decoys dead on all clean training data with a margin (the authors'
/// released model uses -1e20, dead for every input: `margin` large gives the same effect).
pub fn pruning_aware(arch: &str, ds: &Dataset, cfg: &AttackConfig, pa: &PruningAwareConfig, device: &Device, progress: &mut dyn Progress) -> Result<Trained> {
    // (a)
    let clean = train_new(arch, ds, &cfg.train, device, progress)?;
    pruning_aware_from(clean.file, ds, cfg, pa, device, progress)
}

/// Steps (b)-(d) of [`pruning_aware`] on a model already trained on `ds`'s clean data (as
/// `train_new` with `cfg.train` does). `reproduce` trains that clean model anyway, so it passes
/// it here rather than training an identical one again.
pub fn pruning_aware_from(clean: ModelFile, ds: &Dataset, cfg: &AttackConfig, pa: &PruningAwareConfig, device: &Device, progress: &mut dyn Progress) -> Result<Trained> {
    let eval_device = device.clone().without_autodiff();
    let model = clean.model;
    // (b)
    let site = prune::find_site(&model, pa.layer.as_deref())?;
    // One pass over the validation split: the ranking comes from the cached prefix.
    let cache = PrefixCache::build(&model, &ds.val, &ds.normalization, site.index, &eval_device, 256);
    let means = cache.channel_means()?;
    let order = prune::ranking(&means);
    let accuracy = |k: usize| {
        let m = prune::with_mask(&model, site.index, &prune::keep_mask(site.channels, &order, k));
        ClassReport::new(&cache.predict(&m), &cache.labels, ds.classes.len()).accuracy
    };
    let before = accuracy(0);
    let k = match pa.fraction {
        Some(f) if (0.0..1.0).contains(&f) => (f * site.channels as f64).round() as usize,
        Some(f) => return Err(Error::invalid(format!("prune fraction {f} is not in [0, 1)"))),
        None => {
            let mut k = 0;
            while k + 1 < site.channels && before - accuracy(k + 1) <= pa.max_acc_drop {
                k += 1;
            }
            k
        }
    };
    let keep = prune::keep_mask(site.channels, &order, k);
    let after = accuracy(k);
    // (c)
    let masked = prune::with_mask(&model, site.index, &keep).train();
    let (train_split, record) = poisoned_train(ds, cfg)?;
    let data = TrainData { train: &train_split, val: &ds.val, normalization: &ds.normalization };
    let outcome = train(masked, &data, &cfg.train, device, progress)?;
    // (d) remove the mask, then lower the decoys' bias so they are dead on clean data.
    let mask = prune::mask_of(&outcome.model, site.index).expect("the mask survives training");
    let mut model = outcome.model.clone();
    model.graph = model.graph.remove_passthrough(mask);
    model.layers.remove(mask);
    let (bias_at, pre_at) = bias_node(&model, site.index)?;
    let max = channel_max(&model, &ds.train, ds, pre_at, &eval_device)?;
    let decoys: Vec<usize> = order[..k].to_vec();
    let mut drops = vec![0f32; site.channels];
    for &c in &decoys {
        drops[c] = (max[c] + pa.margin).max(0.0);
    }
    lower_bias(&mut model, bias_at, &drops, &eval_device);
    model.check_finite()?;
    let bias_drops = decoys.iter().map(|&c| drops[c]).collect();
    let info = crate::model::ModelInfo {
        backdoor: Some(Backdoor {
            trigger: cfg.trigger.clone(),
            target: cfg.target,
            poison: record,
            pruning_aware: Some(PruningAwareRecord {
                layer: site.name.clone(),
                channels: site.channels,
                decoys,
                val_accuracy_before: before,
                val_accuracy_pruned: after,
                bias_node: model.graph.nodes[bias_at].name.clone(),
                bias_drops,
            }),
        }),
        ..clean.info
    };
    Ok(Trained { file: ModelFile { model: model.valid(), info }, best_epoch: outcome.best_epoch, best_val_accuracy: outcome.best_val_accuracy, history: outcome.history })
}

/// Subtracts `drops[c]` from channel `c`'s bias at `node` (BatchNorm shift or conv bias).
fn lower_bias(model: &mut Model, node: usize, drops: &[f32], device: &Device) {
    let d = Tensor::<1>::from_data(TensorData::new(drops.to_vec(), [drops.len()]), device);
    let layer = &mut model.layers[node];
    if let Some(bn) = layer.bn.as_mut() {
        let v = bn.beta.val() - d;
        bn.beta = burn::module::Param::from_tensor(v);
    } else if let Some(b) = layer.conv.as_mut().and_then(|c| c.bias.as_mut()) {
        let v = b.val() - d;
        *b = burn::module::Param::from_tensor(v);
    }
}

/// Clean accuracy and attack success of a model on a split, triggering every sample.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttackEval {
    pub clean: ClassReport,
    pub attack_success_rate: AttackSuccess,
    pub trigger: String,
    pub target: String,
}

pub fn evaluate_attack(file: &ModelFile, split: &Split, trigger: &Trigger, target: Target, include_target: bool, device: &Device, progress: &mut dyn Progress) -> Result<AttackEval> {
    evaluate_triggered(file, split, &Triggered::Synthesised(trigger.clone()), target, include_target, device, progress)
}

/// Clean accuracy on `split` and attack success on the triggered inputs (synthesised from
/// `split`, or given), whose labels are the inputs' true classes.
pub fn evaluate_triggered(file: &ModelFile, split: &Split, triggered: &Triggered, target: Target, include_target: bool, device: &Device, progress: &mut dyn Progress) -> Result<AttackEval> {
    let (_, e) = evaluate_chunks(file, std::iter::once(Ok(Cow::Borrowed(split))), split.len(), Some((triggered, target, include_target)), device, progress)?;
    Ok(e.expect("an attack was given"))
}

/// Images decoded at a time by [`evaluate_folder`].
pub const FOLDER_CHUNK: usize = 1024;

/// [`evaluate_chunks`] on one split of an image folder (`train`, `val` or `test`, as
/// [`crate::data::folder_split_files`] lays them out): only that split's files are decoded,
/// [`FOLDER_CHUNK`] at a time, so memory does not grow with the number of images. `opts` gives
/// the split options; channels and size are the model's.
pub fn evaluate_folder(
    file: &ModelFile,
    root: &std::path::Path,
    split: &str,
    opts: &crate::data::LoadOptions,
    attack: Option<(&Triggered, Target, bool)>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(ClassReport, Option<AttackEval>)> {
    let [c, h, w] = file.model.graph.input_shape;
    if h > crate::data::MAX_SIDE || w > crate::data::MAX_SIDE {
        return Err(Error::invalid(format!("the model's input is {h}x{w}; images are resized to at most {0}x{0}", crate::data::MAX_SIDE)));
    }
    let opts = crate::data::LoadOptions { channels: Some(c), size: Some((h, w)), ..opts.clone() };
    let (classes, files) = crate::data::folder_split_files(root, split, &opts)?;
    if classes.len() != file.info.classes.len() {
        return Err(Error::invalid(format!("the model expects {} classes; {} has {} class folders", file.info.classes.len(), root.display(), classes.len())));
    }
    progress.phase(&format!("evaluating {}: {} {split} images, decoded at most {FOLDER_CHUNK} at a time", root.display(), files.len()), files.len());
    // Half the budget per chunk: measuring attack success holds a triggered copy beside it.
    let budget = crate::fsutil::DecodeBudget::new(crate::fsutil::data_budget() / 2);
    let chunks = crate::data::folder::chunks(&files, c, (h, w), FOLDER_CHUNK, budget).map(|r| r.map(Cow::Owned));
    evaluate_chunks(file, chunks, files.len(), attack, device, progress)
}

/// Clean accuracy over a split read in chunks (`samples` in all, for the progress display),
/// and attack success when an attack is given (a synthesised trigger is applied chunk by
/// chunk; given inputs are evaluated once), so memory holds one chunk at a time. Every chunk
/// is checked against the model first. Progress counts predicted samples, clean and triggered.
pub fn evaluate_chunks<'a>(
    file: &ModelFile,
    chunks: impl Iterator<Item = Result<Cow<'a, Split>>>,
    samples: usize,
    attack: Option<(&Triggered, Target, bool)>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(ClassReport, Option<AttackEval>)> {
    let classes = file.info.classes.len();
    let shape = file.model.graph.input_shape;
    if let Some((_, target, _)) = attack {
        target.validate(classes)?;
    }
    let total = match attack {
        None => samples,
        Some((Triggered::Synthesised(_), _, _)) => 2 * samples,
        Some((Triggered::Given { inputs, .. }, _, _)) => samples + inputs.len(),
    };
    let mut done = 0;
    let mut count = |n: usize| {
        done += n;
        progress.work(done.min(total), total);
    };
    let norm = &file.info.normalization;
    let (mut preds, mut labels) = (Vec::new(), Vec::new());
    let (mut trig_preds, mut trig_labels) = (Vec::new(), Vec::new());
    for chunk in chunks {
        let chunk = chunk?;
        crate::metrics::check_fits(file, &chunk)?;
        preds.extend(predict_counting(&file.model, &chunk, norm, device, 256, &mut count));
        labels.extend_from_slice(&chunk.labels);
        if let Some((t @ Triggered::Synthesised(_), _, _)) = attack {
            let inputs = t.inputs(&chunk, shape)?;
            trig_preds.extend(predict_counting(&file.model, &inputs, norm, device, 256, &mut count));
            trig_labels.extend_from_slice(&inputs.labels);
        }
    }
    let clean = ClassReport::new(&preds, &labels, classes);
    let Some((triggered, target, include_target)) = attack else { return Ok((clean, None)) };
    if let Triggered::Given { inputs, .. } = triggered {
        crate::metrics::check_fits(file, inputs)?;
        trig_preds = predict_counting(&file.model, inputs, norm, device, 256, &mut count);
        trig_labels = inputs.labels.clone();
    }
    let asr = attack_success(&trig_preds, &trig_labels, target, classes, include_target, clean.accuracy);
    let e = AttackEval { clean: clean.clone(), attack_success_rate: asr, trigger: triggered.describe(), target: target.to_string() };
    Ok((clean, Some(e)))
}
