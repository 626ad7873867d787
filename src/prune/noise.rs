//! Multiplicative noise on neurons, applied by the interpreter as it runs (a [`NodeHook`]): what
//! adversarial neuron pruning perturbs to find the neurons a backdoor relies on, and what the
//! scan perturbs to see whether a model collapses onto one class when its neurons are shaken.

use burn::tensor::{Device, Tensor, TensorData};

use super::neurons::{NeuronKind, NeuronLayer};
use crate::model::Model;
use crate::model::net::{Activation, NodeHook};
use crate::rng::Rng;

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

