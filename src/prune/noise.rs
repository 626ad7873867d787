//! Multiplicative noise on neurons, applied by the interpreter as it runs (a [`NodeHook`]): what
//! adversarial neuron pruning perturbs to find the neurons a backdoor relies on, and what the
//! scan perturbs to see whether a model collapses onto one class when its neurons are shaken.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::neurons::{NeuronKind, NeuronLayer};
use crate::model::Model;
use crate::model::net::{Activation, Mode, NodeHook};
use crate::rng::Rng;
use crate::train::cross_entropy;

/// Per-neuron scale and shift applied by the interpreter: at a neuron layer with shift vector
/// `s` (BatchNorm's β, or the bias), `y' = scale (y − s) + coef s`, computed as
/// `y scale + s (coef − scale)`.
pub struct Perturbation<'a> {
    /// Neuron layer of each graph node, if any.
    slot: &'a [Option<usize>],
    scale: Vec<Tensor<1>>,
    offset: Vec<Tensor<1>>,
}

impl<'a> Perturbation<'a> {
    /// `coef` `None` means the shift is untouched (coefficient 1).
    pub fn new(slot: &'a [Option<usize>], shifts: &[Tensor<1>], scale: Vec<Tensor<1>>, coef: Option<&[Tensor<1>]>) -> Self {
        let offset = shifts
            .iter()
            .zip(&scale)
            .enumerate()
            .map(|(k, (s, m))| match coef {
                Some(c) => s.clone() * (c[k].clone() - m.clone()),
                None => s.clone() * (m.clone().neg() + 1.0),
            })
            .collect();
        Perturbation { slot, scale, offset }
    }
}

impl NodeHook for Perturbation<'_> {
    fn after(&self, node: usize, out: Activation) -> Activation {
        let Some(k) = self.slot.get(node).copied().flatten() else { return out };
        let (scale, offset) = (self.scale[k].clone(), self.offset[k].clone());
        let c = scale.dims()[0];
        match out {
            Activation::Map(t) => Activation::Map(t * scale.reshape([1, c, 1, 1]) + offset.reshape([1, c, 1, 1])),
            Activation::Flat(t) => Activation::Flat(t * scale.reshape([1, c]) + offset.reshape([1, c])),
        }
    }
}

/// The per-channel shift of a neuron layer: BatchNorm's or LayerNorm's β, a conv's or linear layer's bias
/// (zero without one).
pub fn shift_of(model: &Model, layer: &NeuronLayer, device: &Device) -> Tensor<1> {
    let p = &model.layers[layer.node];
    let bias = match layer.kind {
        NeuronKind::BatchNorm => p.bn.as_ref().map(|b| b.beta.val()),
        NeuronKind::LayerNorm => p.ln.as_ref().map(|l| l.beta.val()),
        NeuronKind::Conv => p.conv.as_ref().and_then(|c| c.bias.as_ref().map(|b| b.val())),
        NeuronKind::Linear => p.linear.as_ref().and_then(|l| l.bias.as_ref().map(|b| b.val())),
    };
    bias.unwrap_or_else(|| Tensor::zeros([layer.units], device))
}

/// `n` values drawn uniformly from [-bound, bound].
pub fn uniform(n: usize, bound: f64, rng: &mut Rng, device: &Device) -> Tensor<1> {
    let v: Vec<f32> = (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
    Tensor::from_data(TensorData::new(v, [n]), device)
}

/// The neurons a noise perturbs: each graph node's neuron layer, if any (`slot`), and each
/// layer's shift vector ([`shift_of`]).
pub struct NoiseSites<'a> {
    pub slot: &'a [Option<usize>],
    pub shifts: &'a [Tensor<1>],
}

/// One signed ascent step of the noise on the cross-entropy of `x` against `y` (labels on the
/// autodiff device): `delta` on the
/// neurons' scales around `base` (ANP's masks; `None`: 1) and `xi` on their shifts, each moved
/// by `step` in the sign of its gradient and clipped back to [-eps, eps]. ANP takes one such
/// step per batch, from a random start; the scan's noise check takes many. Returns the new
/// noise and the loss before the step.
#[allow(clippy::too_many_arguments)]
pub fn ascend(model: &Model, x: Tensor<4>, y: Tensor<1, Int>, mode: Mode, sites: &NoiseSites, base: Option<&[Tensor<1>]>, delta: &[Tensor<1>], xi: &[Tensor<1>], step: f64, eps: f64) -> (Vec<Tensor<1>>, Vec<Tensor<1>>, Tensor<1>) {
    let d: Vec<Tensor<1>> = delta.iter().map(|t| t.clone().autodiff().require_grad()).collect();
    let e: Vec<Tensor<1>> = xi.iter().map(|t| t.clone().autodiff().require_grad()).collect();
    let scale: Vec<Tensor<1>> = match base {
        Some(m) => d.iter().zip(m).map(|(d, m)| d.clone() + m.clone()).collect(),
        None => d.iter().map(|d| d.clone() + 1.0).collect(),
    };
    let coef: Vec<Tensor<1>> = e.iter().map(|t| t.clone() + 1.0).collect();
    let loss = cross_entropy(model.forward_hooked(x, mode, &Perturbation::new(sites.slot, sites.shifts, scale, Some(&coef))), y);
    let grads = loss.backward();
    let moved = |t: &Tensor<1>| -> Tensor<1> {
        let g = t.grad(&grads).unwrap_or_else(|| t.clone().without_autodiff().zeros_like());
        (t.clone().without_autodiff() + g.sign() * step).clamp(-eps, eps)
    };
    (d.iter().map(moved).collect(), e.iter().map(moved).collect(), loss.detach().without_autodiff())
}
