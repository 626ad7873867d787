//! The paper's defenses: pruning the last convolutional layer's least active channels (with the
//! exact fast sweep), and fine-tuning.

use burn::module::Module;
use burn::tensor::Device;

use super::{CurvePoint, DefenseConfig, KnownAttack, Pruned, PrunedLayer, Snapshot, Stopwatch, defender_split};
use crate::data::Dataset;
use crate::error::Result;
use crate::metrics::{ClassReport, attack_success};
use crate::model::{Model, ModelFile};
use crate::prune::sweep::{sweep_predictions, sweep_split};
use crate::prune::{self, PrefixCache, Site};
use crate::train::{TrainData, train};
use crate::progress::Progress;

/// Ranks the site's channels by mean clean validation activation and prunes the least active
/// ones as the stop rule says; measures the whole curve on the way (the test split and a known
/// trigger only to measure).
///
/// Passes over data, each once: validation (fills the prefix cache; the ranking is read from
/// it), the clean test split and the triggered test split (streamed in chunks, so memory stays
/// flat however large the test split is).
#[allow(clippy::too_many_arguments)]
pub(super) fn prune_site(file: &ModelFile, ds: &Dataset, cfg: &DefenseConfig, known: Option<&KnownAttack>, device: &Device, progress: &mut dyn Progress, clock: &mut Stopwatch) -> Result<Pruned> {
    let model = &file.model;
    let classes = file.info.classes.len();
    let site: Site = prune::find_site(model, cfg.layer.as_deref())?;
    cfg.stop.validate(site.channels)?;
    if ds.val.is_empty() {
        return Err(crate::Error::invalid("no clean samples to rank channels on"));
    }
    progress.phase(&format!("ranking {} channels of {} on {} validation samples: caching the layers before it", site.channels, site.name, ds.val.len()), 1);
    let val_cache = PrefixCache::build_range(model, &ds.val, 0..ds.val.len(), &ds.normalization, site.index, device, 256, &mut |d, n| progress.work(d, n));
    let means = val_cache.channel_means()?;
    let order = prune::ranking(&means);
    let levels = cfg.stop.levels(site.channels);
    progress.phase(&format!("pruning sweep on validation data: {} levels", levels + 1), 0);
    let val_levels = sweep_predictions(model, &val_cache, site.index, site.channels, &order, levels);
    drop(val_cache);
    let val_acc: Vec<f64> = val_levels.iter().map(|p| ClassReport::new(p, &ds.val.labels, classes).accuracy).collect();
    let k = cfg.stop.choose(&val_acc, &cfg.budget);
    clock.lap("ranking and pruning sweep (validation)");
    // Evaluation-only curves on the test split.
    progress.phase(&format!("pruning curve on {} test samples (evaluation only)", ds.test.len()), 1);
    let test_levels = sweep_split(model, &ds.test, &ds.normalization, site.index, site.channels, &order, levels, device, &mut |d, n| progress.work(d, n));
    let test_acc: Vec<f64> = test_levels.iter().map(|p| ClassReport::new(p, &ds.test.labels, classes).accuracy).collect();
    let asr: Option<Vec<crate::metrics::AttackSuccess>> = match known {
        Some(a) => {
            let triggered = a.trigger.inputs(&ds.test, ds.shape)?;
            progress.phase(&format!("attack success along the curve on {} triggered samples (evaluation only)", triggered.len()), 1);
            let levels = sweep_split(model, &triggered, &ds.normalization, site.index, site.channels, &order, levels, device, &mut |d, n| progress.work(d, n));
            Some(levels.iter().zip(&test_acc).map(|(p, &clean)| attack_success(p, &triggered.labels, a.target, classes, a.include_target, clean)).collect())
        }
        None => None,
    };
    clock.lap("pruning curve (test split, evaluation only)");
    let a0 = asr.as_ref().map(|a| a[0].clone());
    // The unpruned model's test numbers are level 0 of the sweep: no second pass over the test
    // split.
    let before = (
        Snapshot { val_accuracy: val_acc[0], clean_accuracy: test_acc[0], attack_success_rate: a0.as_ref().and_then(|a| a.rate), attack_success_rate_ci95: a0.as_ref().map(|a| a.ci95) },
        a0.map(|a| a.convention),
    );
    let curve = (0..val_acc.len())
        .map(|j| CurvePoint {
            pruned: j,
            fraction: j as f64 / site.channels as f64,
            threshold: None,
            val_accuracy: val_acc[j],
            test_accuracy: Some(test_acc[j]),
            attack_success_rate: asr.as_ref().and_then(|a| a[j].rate),
        })
        .collect();
    let pruned = order[..k].to_vec();
    let masked = prune::with_mask(model, site.index, &prune::keep_mask(site.channels, &order, k));
    Ok(Pruned {
        model: masked,
        layer: site.name.clone(),
        layer_reason: site.reason,
        units: site.channels,
        site_pruned: pruned.clone(),
        by_layer: vec![PrunedLayer { layer: site.name, units: site.channels, pruned }],
        curve,
        before: Some(before),
        anp: None,
    })
}

/// Fine-tunes every weight on the defender's clean data, choosing the epoch on validation
/// accuracy. Masks are graph ops without parameters: pruned channels stay exactly zero.
pub(super) fn finetune(model: Model, ds: &Dataset, cfg: &DefenseConfig, device: &Device, progress: &mut dyn Progress) -> Result<(Model, usize)> {
    let clean_train = defender_split(&ds.train, cfg.clean_fraction, cfg.finetune.seed)?;
    let data = TrainData { train: &clean_train, val: &ds.val, normalization: &ds.normalization };
    let outcome = train(model.train(), &data, &cfg.finetune, device, progress)?;
    Ok((outcome.model, outcome.history.len()))
}
