//! The maximum-margin statistic (MM-BD: Wang et al., S&P 2024), a view of every class that
//! assumes no trigger shape and needs no clean data: starting from random inputs, how far above
//! every other logit can the class's logit be pushed? A backdoor gives its target a shortcut
//! (a few neurons that, once fired, outvote the rest), so the target's reachable margin can
//! stand out whatever the trigger looks like. All classes ride in one batch per step; the
//! weights stay frozen.
//!
//! A class whose index reaches [`MARGIN_FLAG`](super::MARGIN_FLAG) (set on clean models: they
//! have naturally wide classes, up to 4.35) is a suspect, refined in every family and confirmed
//! by its trigger on held-out data like any other. Some targets stand out hugely (18.9 for a
//! blended MNIST backdoor, 45.9 for a PyTorch residual GTSRB net's sticker), others not at all
//! (a tone, a pruning-aware backdoor: docs/detection.md).

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::ModelFile;
use crate::progress::Progress;
use crate::rng::Rng;

/// How hard the margins are pushed.
#[derive(Clone, Debug, Serialize)]
pub struct MarginConfig {
    /// Random starting inputs per class (MM-BD: 30), fewer when the classes would need more
    /// than [`MAX_ROWS`] in all.
    pub images: usize,
    /// Ascent steps (MM-BD: 300 of SGD; fewer Adam steps here, for time).
    pub steps: usize,
    /// Adam's learning rate, as a fraction of the inputs' value range per step.
    pub lr: f64,
}

impl Default for MarginConfig {
    fn default() -> Self {
        MarginConfig { images: 8, steps: 100, lr: 0.02 }
    }
}

/// The most inputs in one step, all classes together (the scan's first pass has the same
/// bound), so a model with many classes costs no more memory per step than one with few.
pub const MAX_ROWS: usize = 512;

/// The best margin each of `classes` reached: the largest, over its random starting inputs and
/// the steps, of its logit minus the largest other logit, with the input kept inside `range`
/// (before the model's normalisation `mean`/`std`, shaped [1, C, 1, 1]).
#[allow(clippy::too_many_arguments)]
pub fn max_margins(file: &ModelFile, classes: &[usize], range: [f32; 2], mean: &Tensor<4>, std: &Tensor<4>, cfg: &MarginConfig, seed: u64, device: &Device, progress: &mut dyn Progress) -> Result<Vec<f64>> {
    let [c, h, w] = file.model.graph.input_shape;
    let k = file.info.classes.len();
    let per = cfg.images.min(MAX_ROWS / classes.len().max(1)).max(1);
    let n = classes.len() * per;
    let sample = c * h * w;
    let [lo, hi] = range;
    let mut rng = Rng::new(seed ^ 0x3A6);
    let mut x: Vec<f32> = (0..n * sample).map(|_| lo + (hi - lo) * rng.uniform() as f32).collect();
    let (mut m, mut v) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    // One-hot of each row's class, and a large negative there so the row's own logit drops out
    // of "the largest other logit".
    let mut onehot = vec![0f32; n * k];
    for (i, row) in onehot.chunks_mut(k).enumerate() {
        row[classes[i / per]] = 1.0;
    }
    let ad = device.clone().autodiff();
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [n, k]), &ad);
    let own_out = onehot.clone().mul_scalar(1e9);
    let (mean, std) = (mean.clone().autodiff(), std.clone().autodiff());
    let mut best = vec![f64::NEG_INFINITY; classes.len()];
    progress.phase(&format!("scan (margins): {} classes x {per} random inputs, {} steps", classes.len(), cfg.steps), cfg.steps);
    for step in 0..cfg.steps {
        let leaf = Tensor::<4>::from_data(TensorData::new(x.clone(), [n, c, h, w]), &ad).require_grad();
        let logits = file.model.forward((leaf.clone() - mean.clone()) / std.clone());
        let own = (logits.clone() * onehot.clone()).sum_dim(1);
        let other = (logits - own_out.clone()).max_dim(1);
        let margin = own - other;
        let grads = margin.clone().sum().backward();
        let margins = super::host(margin.detach().without_autodiff());
        for (i, &mg) in margins.iter().enumerate() {
            best[i / per] = best[i / per].max(mg as f64);
        }
        let g = super::host(leaf.grad(&grads).ok_or_else(|| Error::model("no gradient reached the input"))?);
        if g.iter().any(|v| !v.is_finite()) {
            return Err(Error::model("the margin's gradient is not finite (NaN weights or activations?)"));
        }
        adam_ascent(&mut x, &mut m, &mut v, &g, step + 1, cfg.lr as f32 * (hi - lo), range);
        progress.work(step + 1, cfg.steps);
    }
    Ok(best)
}

/// One Adam step up the gradient (the default betas 0.9, 0.999), projected back into `range`.
fn adam_ascent(x: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], t: usize, lr: f32, [lo, hi]: [f32; 2]) {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    let (c1, c2) = (1.0 - B1.powi(t as i32), 1.0 - B2.powi(t as i32));
    for i in 0..x.len() {
        m[i] = B1 * m[i] + (1.0 - B1) * g[i];
        v[i] = B2 * v[i] + (1.0 - B2) * g[i] * g[i];
        x[i] = (x[i] + lr * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8)).clamp(lo, hi);
    }
}

/// Leave-one-out robust outlier indices of the margins: for class k,
/// `(m_k - median_{j != k} m_j) / (1.4826 MAD_{j != k})`. On the margins themselves, not their
/// logs: a class no input could raise above the others has a negative margin.
pub fn outlier_indices(margins: &[f64]) -> Vec<Option<f64>> {
    (0..margins.len()).map(|k| super::leave_one_out_z(margins, k, 0.0)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::Normalization;
    use crate::model::{Model, ModelInfo, arch};

    pub(crate) fn random_lenet() -> ModelFile {
        let device = crate::cpu_device();
        let model = Model::init(arch::build("lenet", [1, 28, 28], 10).unwrap(), 3, &device).unwrap();
        let info = ModelInfo { arch: "lenet".into(), data_kind: None, classes: (0..10).map(|c| c.to_string()).collect(), normalization: Normalization::identity(1), backdoor: None, extra: Default::default(), onnx: None };
        ModelFile { model, info }
    }

    #[test]
    fn the_ascent_raises_every_margin_and_is_repeatable() {
        let file = random_lenet();
        let device = crate::cpu_device();
        let (mean, std) = (Tensor::<4>::zeros([1, 1, 1, 1], &device), Tensor::<4>::ones([1, 1, 1, 1], &device));
        let run = |steps: usize| max_margins(&file, &[0, 3, 7], [0.0, 1.0], &mean, &std, &MarginConfig { images: 2, steps, lr: 0.02 }, 5, &device, &mut crate::progress::Silent).unwrap();
        let (start, pushed) = (run(1), run(25));
        assert!(start.iter().zip(&pushed).all(|(a, b)| b > a), "every class's margin rises: {start:?} -> {pushed:?}");
        assert_eq!(run(25), pushed, "same seed, same margins");
    }

    #[test]
    fn margin_indices_are_robust_z_scores_on_the_margins_themselves() {
        let idx = outlier_indices(&[10.0, 11.0, 9.0, 10.5, 40.0, -3.0]);
        assert!(idx[4].unwrap() > 10.0, "{idx:?}");
        assert!(idx[5].unwrap() < -5.0, "a negative margin is an index, not an error: {idx:?}");
        assert!(idx[0].unwrap().abs() < 1.0);
        assert_eq!(outlier_indices(&[1.0, 2.0]), vec![None, None], "too few others");
    }
}
