//! Adam with each parameter's update as one parallel pass on the CPU kernels
//! ([`super::kernels::adam_step`]); burn's `Adam` takes about ten tensor operations per
//! parameter, each on the calling thread alone (a twentieth of a signnet training step, with
//! both cores' other work waiting on it). The arithmetic and the state are burn's, so a model
//! trains to the same numbers up to rounding, and on a device the kernels do not cover the
//! step is burn's own.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer};
use burn::tensor::{Device, Tensor};

use super::kernels::AdamStep;
use super::ops as fast;

/// burn's `AdamConfig` defaults: beta 0.9 and 0.999, epsilon 1e-5.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

#[derive(Clone)]
pub struct FusedAdam {
    weight_decay: f32,
    /// burn's optimiser with the same settings, for tensors off the kernels' device.
    fallback: Adam,
}

impl FusedAdam {
    /// Adam with burn's defaults and an L2 penalty (0: none), as a whole-module optimiser.
    pub fn init(weight_decay: f32) -> ModuleOptimizer {
        let mut config = AdamConfig::new().with_beta_1(BETA_1).with_beta_2(BETA_2).with_epsilon(EPSILON);
        if weight_decay > 0.0 {
            config = config.with_weight_decay(Some(WeightDecayConfig::new(weight_decay)));
        }
        ModuleOptimizer::from(FusedAdam { weight_decay, fallback: config.build() })
    }
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(&self, lr: LearningRate, tensor: Tensor<D>, grad: Tensor<D>, state: Option<AdamState<D>>) -> (Tensor<D>, Option<AdamState<D>>) {
        let moments_covered = state.as_ref().is_none_or(|s| fast::on_flex_f32(&s.momentum.moment_1) && fast::on_flex_f32(&s.momentum.moment_2));
        if !(fast::on_flex_f32(&tensor) && fast::on_flex_f32(&grad) && moments_covered) {
            return self.fallback.step(lr, tensor, grad, state);
        }
        // The first step starts from zero moments, which is burn's first step too. Taking the
        // moments out of the state leaves the kernel their only reference: updated in place.
        let (m, v, time) = match state {
            Some(s) => (s.momentum.moment_1, s.momentum.moment_2, s.momentum.time + 1),
            None => (grad.zeros_like(), grad.zeros_like(), 1),
        };
        let step = AdamStep { lr: lr as f32, beta_1: BETA_1, beta_2: BETA_2, epsilon: EPSILON, weight_decay: self.weight_decay, time: time as i32 };
        let (tensor, m, v) = fast::adam_step(tensor, grad, m, v, step);
        (tensor, Some(AdamState::new(AdaptiveMomentumState::new(time, m, v))))
    }

    fn to_device<const D: usize>(state: AdamState<D>, device: &Device) -> AdamState<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use burn::tensor::TensorData;

    /// Ten steps of the fused optimiser and of burn's on the same parameters and gradients,
    /// with and without weight decay: the same parameters up to rounding.
    #[test]
    fn matches_burns_adam() {
        let device = crate::cpu_device();
        let mut rng = Rng::new(11);
        let mut random = |n: usize| -> Tensor<2> { Tensor::from_data(TensorData::new((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [n / 50, 50]), &device) };
        for decay in [0.0, 0.01] {
            let mut config = AdamConfig::new();
            if decay > 0.0 {
                config = config.with_weight_decay(Some(WeightDecayConfig::new(decay)));
            }
            let (burns, ours) = (config.build(), FusedAdam { weight_decay: decay, fallback: config.build() });
            let start = random(100_000);
            let (mut a, mut b) = (start.clone(), start * 1.0);
            let (mut sa, mut sb) = (None, None);
            for _ in 0..10 {
                let g = random(100_000);
                (a, sa) = burns.step(1e-2, a, g.clone(), sa);
                (b, sb) = ours.step(1e-2, b, g, sb);
            }
            let (a, b) = (a.into_data().try_to_vec::<f32>().unwrap(), b.into_data().try_to_vec::<f32>().unwrap());
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "decay {decay}: largest difference {worst}");
            assert_ne!(a, vec![0.0; a.len()]);
        }
    }
}
