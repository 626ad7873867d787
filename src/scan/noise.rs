//! Adversarial neuron noise (after BAN, Xu et al., NeurIPS 2024): shake every neuron's scale
//! and shift by at most ε, in the direction that most raises the loss on clean data, then see
//! where the predictions go. A backdoor has a few neurons that decide everything once they
//! move (its shortcut), so the shaken model may send most inputs to its target, whatever the
//! trigger looks like and however large it is. The cost does not grow with the number of
//! classes. The noise is ANP's ([`Perturbation`]), so the weights stay frozen.
//!
//! Reported beside the verdict (`scan --neuron-noise`), not part of it: clean models collapse
//! onto some class too (docs/detection.md, `scripts/scan_views.sh`), and even the agreement of
//! this view, the widest margin and the smallest trigger named a class of a clean MNIST LeNet.

use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::data::{Normalization, Split, batch};
use crate::error::{Error, Result};
use crate::metrics::{argmax, wilson};
use crate::model::Model;
use crate::model::net::Mode;
use crate::progress::Progress;
use crate::prune::neurons::neuron_layers;
use crate::prune::noise::{NoiseSites, Perturbation, ascend, shift_of, uniform};
use crate::rng::Rng;

/// How the neurons are shaken.
#[derive(Clone, Debug, Serialize)]
pub struct NoiseConfig {
    /// Largest relative change of a neuron's scale and shift: BAN's 0.3, taken as it is (ANP
    /// defends with 0.4).
    pub eps: f64,
    /// Signed ascent steps on the clean loss, each of `eps / 10`.
    pub steps: usize,
    /// Clean images per step; the steps cycle over a few fixed batches.
    pub batch_size: usize,
    pub batches: usize,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        NoiseConfig { eps: 0.3, steps: 30, batch_size: 128, batches: 5 }
    }
}

/// Where the shaken model sends held-out clean inputs.
#[derive(Clone, Debug, Serialize)]
pub struct NoiseCollapse {
    /// The class that collects the largest share of other classes' inputs.
    pub class: usize,
    /// That share: held-out inputs of other classes the shaken model predicts as `class`.
    pub share: f64,
    pub share_ci95: [f64; 2],
    pub samples: usize,
    /// The second class's share, for scale.
    pub runner_up_share: f64,
    /// Held-out accuracy of the shaken model.
    pub accuracy: f64,
    /// The noise's bound (see [`NoiseConfig::eps`]).
    pub eps: f64,
    /// Neuron layers shaken and their units.
    pub layers: usize,
    pub units: usize,
}

/// Shakes `model`'s neurons on `inv` (the scan's inversion set) and measures the collapse on
/// `hold`. `None` when the model has no neuron layer to shake.
#[allow(clippy::too_many_arguments)]
pub fn collapse(model: &Model, inv: &Split, hold: &Split, norm: &Normalization, classes: usize, cfg: &NoiseConfig, seed: u64, device: &Device, progress: &mut dyn Progress) -> Result<Option<NoiseCollapse>> {
    let layers = neuron_layers(&model.graph);
    if layers.is_empty() || inv.is_empty() || hold.is_empty() {
        return Ok(None);
    }
    if !(cfg.eps.is_finite() && cfg.eps > 0.0) || cfg.batch_size == 0 || cfg.batches == 0 {
        return Err(Error::invalid("neuron noise needs a positive eps, batch size and batch count"));
    }
    let shape = model.graph.input_shape;
    let plain = device.clone().without_autodiff();
    let mut slot = vec![None; model.graph.nodes.len()];
    for (k, l) in layers.iter().enumerate() {
        slot[l.node] = Some(k);
    }
    let shifts: Vec<Tensor<1>> = layers.iter().map(|l| shift_of(model, l, &plain)).collect();
    let mut rng = Rng::new(seed ^ 0xBA4);
    let mut order: Vec<usize> = (0..inv.len()).collect();
    rng.shuffle(&mut order);
    let per = cfg.batch_size.min(inv.len());
    let batches: Vec<Vec<usize>> = order.chunks(per).take(cfg.batches).map(|c| c.to_vec()).collect();
    let mut delta: Vec<Tensor<1>> = layers.iter().map(|l| uniform(l.units, cfg.eps, &mut rng, &plain)).collect();
    let mut xi: Vec<Tensor<1>> = layers.iter().map(|l| uniform(l.units, cfg.eps, &mut rng, &plain)).collect();
    progress.phase(&format!("scan (neuron noise): {} neurons in {} layers, {} steps", layers.iter().map(|l| l.units).sum::<usize>(), layers.len(), cfg.steps), cfg.steps);
    let sites = NoiseSites { slot: &slot, shifts: &shifts };
    for s in 0..cfg.steps {
        let (x, y) = batch(inv, &batches[s % batches.len()], shape, norm, &plain);
        let (d, e, loss) = ascend(model, x, y.autodiff(), Mode::Eval, &sites, None, &delta, &xi, cfg.eps / 10.0, cfg.eps);
        if !loss.into_scalar::<f32>().is_finite() {
            return Err(Error::model("the loss under neuron noise is not finite (NaN weights or activations?)"));
        }
        (delta, xi) = (d, e);
        progress.work(s + 1, cfg.steps);
    }

    // Where the shaken model sends the held-out inputs.
    let scale: Vec<Tensor<1>> = delta.iter().map(|t| t.clone() + 1.0).collect();
    let coef: Vec<Tensor<1>> = xi.iter().map(|t| t.clone() + 1.0).collect();
    let hook = Perturbation::new(&slot, &shifts, scale, Some(&coef));
    let all: Vec<usize> = (0..hold.len()).collect();
    let mut preds = Vec::with_capacity(hold.len());
    for chunk in all.chunks(256) {
        let (x, _) = batch(hold, chunk, shape, norm, &plain);
        preds.extend(argmax(model.forward_hooked(x, Mode::Eval, &hook)));
    }
    // For each class: held-out inputs of other classes sent to it, and how many there are.
    let (mut to, mut own) = (vec![0usize; classes], vec![0usize; classes]);
    for (&p, &y) in preds.iter().zip(&hold.labels) {
        own[y.min(classes - 1)] += 1;
        if p != y && p < classes {
            to[p] += 1;
        }
    }
    let others: Vec<usize> = own.iter().map(|&o| hold.len() - o).collect();
    let share = |t: usize| to[t] as f64 / others[t].max(1) as f64;
    let mut ranked: Vec<usize> = (0..classes).collect();
    ranked.sort_by(|&a, &b| share(b).total_cmp(&share(a)));
    let class = ranked[0];
    let correct = preds.iter().zip(&hold.labels).filter(|(p, y)| p == y).count();
    Ok(Some(NoiseCollapse {
        class,
        share: share(class),
        share_ci95: wilson(to[class], others[class]),
        samples: others[class],
        runner_up_share: ranked.get(1).map_or(0.0, |&c| share(c)),
        accuracy: correct as f64 / hold.len() as f64,
        eps: cfg.eps,
        layers: layers.len(),
        units: layers.iter().map(|l| l.units).sum(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::margin::tests::random_lenet;

    #[test]
    fn the_noise_costs_accuracy_and_names_a_class_repeatably() {
        let file = random_lenet();
        let device = crate::cpu_device();
        // A small set labelled by the model itself: clean accuracy is 1 by construction.
        let mut rng = Rng::new(1);
        let images: Vec<f32> = (0..64 * 784).map(|_| rng.uniform() as f32).collect();
        let mut split = Split { images, labels: vec![0; 64], sample_len: 784, waves: vec![] };
        split.labels = crate::metrics::predict(&file.model, &split, &file.info.normalization, &device, 64);
        let cfg = NoiseConfig { eps: 0.5, steps: 10, batch_size: 32, batches: 2 };
        let run = || collapse(&file.model, &split, &split, &file.info.normalization, 10, &cfg, 0, &device, &mut crate::progress::Silent).unwrap().unwrap();
        let c = run();
        assert!(c.accuracy < 1.0, "the noise is found against the loss: accuracy {}", c.accuracy);
        assert!(c.share >= c.runner_up_share && c.class < 10 && c.eps == 0.5);
        assert_eq!((c.class, c.share, c.accuracy), { let d = run(); (d.class, d.share, d.accuracy) }, "same seed, same result");
    }
}
