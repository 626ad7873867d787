//! Neurons across the whole network: the units a neuron-level defense (adversarial neuron
//! pruning) scores and prunes. A *neuron layer* is every normalisation layer, BatchNorm or
//! LayerNorm (its channels), and, where no normalisation follows, every convolution's output channels and every hidden linear layer's units
//! on the pre-activation, the form an exporter leaves when it folds BatchNorm into the
//! convolution. Pruning many layers at once is the same [`ChannelMask`](crate::model::Op) as
//! fine-pruning's one site, inserted after each neuron layer.

use serde::Serialize;

use super::{mask_of, with_mask};
use crate::model::graph::{Graph, Op};
use crate::model::Model;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NeuronKind {
    BatchNorm,
    LayerNorm,
    Conv,
    Linear,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NeuronLayer {
    pub node: usize,
    pub name: String,
    pub units: usize,
    pub kind: NeuronKind,
}

/// Every neuron layer of `g` in node order. The output layer is left out: its units are the
/// class scores, and pruning one would delete a class, not a feature.
pub fn neuron_layers(g: &Graph) -> Vec<NeuronLayer> {
    let mut out = vec![];
    for (i, n) in g.nodes.iter().enumerate() {
        if i == g.output {
            continue;
        }
        let readers = g.readers(i);
        let feeds_bn = !readers.is_empty() && readers.iter().all(|&r| matches!(g.nodes[r].op, Op::BatchNorm { .. } | Op::LayerNorm { .. }));
        let (kind, units) = match n.op {
            Op::BatchNorm { channels, .. } => (NeuronKind::BatchNorm, channels),
            Op::LayerNorm { channels, .. } => (NeuronKind::LayerNorm, channels),
            Op::Conv2d { out_channels, .. } if !feeds_bn => (NeuronKind::Conv, out_channels),
            Op::Linear { out_features, .. } if !feeds_bn => (NeuronKind::Linear, out_features),
            _ => continue,
        };
        out.push(NeuronLayer { node: i, name: n.name.clone(), units, kind });
    }
    out
}

/// A copy of `model` with a mask after each given node (`(node, keep)`); a mask already there
/// keeps its pruned channels pruned. Weights are shared, not copied.
pub fn with_masks(model: &Model, masks: &[(usize, Vec<bool>)]) -> Model {
    insert_masks(model, masks.iter().filter(|(_, keep)| keep.iter().any(|k| !k)).cloned().collect())
}

/// [`with_masks`] with a mask after every node of `sites`, all kept where `masks` does not name
/// the site (`units[n]`: node n's channels), so that networks built for different `masks`
/// have the same nodes at the same indices (ANP's threshold sweep relies on it).
pub fn with_masks_at(model: &Model, units: &[usize], sites: &[usize], masks: &[(usize, Vec<bool>)]) -> Model {
    let all = sites.iter().map(|&site| masks.iter().find(|(node, _)| *node == site).cloned().unwrap_or_else(|| (site, vec![true; units[site]]))).collect();
    insert_masks(model, all)
}

fn insert_masks(model: &Model, mut masks: Vec<(usize, Vec<bool>)>) -> Model {
    // Inserting a node shifts every later index: go from the last node back.
    masks.sort_by_key(|(node, _)| std::cmp::Reverse(*node));
    let mut m = model.clone();
    for (node, keep) in masks {
        let merged: Vec<bool> = match mask_of(&m, node).map(|i| &m.graph.nodes[i].op) {
            Some(Op::ChannelMask { keep: old }) => old.iter().zip(&keep).map(|(a, b)| *a && *b).collect(),
            _ => keep,
        };
        m = with_mask(&m, node, &merged);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::arch;

    #[test]
    fn batchnorm_layers_stand_for_their_convolutions_and_the_output_is_left_out() {
        let lenet = arch::build("lenet", [1, 28, 28], 10).unwrap();
        let names: Vec<String> = neuron_layers(&lenet).into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["conv1", "conv2", "fc1"], "no BatchNorm: conv and hidden linear pre-activations");
        let signnet = arch::build("signnet", [3, 32, 32], 43).unwrap();
        let layers = neuron_layers(&signnet);
        assert!(layers.iter().filter(|l| l.kind == NeuronKind::BatchNorm).count() >= 3);
        for l in &layers {
            assert!(l.node != signnet.output);
            if l.kind == NeuronKind::Conv {
                panic!("{}: a conv followed by BatchNorm is masked at its BatchNorm", l.name);
            }
        }
    }
}
