//! Folding a mask: physically removing pruned channels. The producing convolution loses
//! output channels (and its BatchNorm the matching statistics), and every consumer loses the
//! matching inputs: a convolution's input channels, or a linear layer's input columns after a
//! flatten. The folded model computes the same function as the masked one, with fewer
//! weights.
//!
//! Folding needs a site reached from one convolution or linear layer through per-channel layers
//! only (BatchNorm, ReLU, pooling, dropout). A site after a residual addition cannot be folded
//! (the skip path carries the channel too); [`fold`] then returns `None` and the mask stays.

use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};

use super::mask_of;
use crate::model::graph::Op;
use crate::model::Model;

fn index_tensor(idx: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), [idx.len()]), device)
}

fn select1(p: &Param<Tensor<1>>, idx: &[usize]) -> Param<Tensor<1>> {
    let t = p.val();
    let d = t.device();
    Param::from_tensor(t.select(0, index_tensor(idx, &d)))
}

/// The masked model with pruned channels removed, or `None` when the site cannot be folded.
pub fn fold(model: &Model, site: usize) -> Option<Model> {
    let mask = mask_of(model, site)?;
    let Op::ChannelMask { keep } = &model.graph.nodes[mask].op else { return None };
    let kept: Vec<usize> = keep.iter().enumerate().filter(|(_, k)| **k).map(|(i, _)| i).collect();
    if kept.is_empty() {
        return None;
    }
    let g = &model.graph;
    let readers = |i: usize| g.readers(i);
    // Upstream: per-channel nodes back to one convolution, each read only along the chain.
    let mut chain = vec![];
    let mut i = site;
    let producer = loop {
        match &g.nodes[i].op {
            Op::Conv2d { groups: 1, .. } | Op::Linear { .. } => break i,
            op if op.is_per_channel() && g.nodes[i].inputs.len() == 1 => {
                chain.push(i);
                i = g.nodes[i].inputs[0];
                if readers(i).len() != 1 {
                    return None;
                }
            }
            _ => return None,
        }
    };
    // Downstream from the mask: per-channel nodes, then consumers to slice.
    let mut to_slice_conv = vec![];
    // (flatten node, if the linear layer reads the channels through one; linear node)
    let mut to_slice_linear = vec![];
    let mut downstream = vec![];
    let mut stack = vec![mask];
    while let Some(n) = stack.pop() {
        for r in readers(n) {
            match &g.nodes[r].op {
                Op::Conv2d { groups: 1, .. } => to_slice_conv.push(r),
                Op::Flatten => {
                    let [lin] = readers(r)[..] else { return None };
                    if !matches!(g.nodes[lin].op, Op::Linear { .. }) {
                        return None;
                    }
                    to_slice_linear.push((Some(r), lin));
                }
                Op::Linear { .. } => to_slice_linear.push((None, r)),
                op if op.keeps_zero() && g.nodes[r].inputs.len() == 1 => {
                    downstream.push(r);
                    stack.push(r);
                }
                _ => return None,
            }
        }
    }
    let shapes = g.validate().ok()?;
    let mut m = model.clone();
    let n = kept.len();
    // The producer: a convolution's output channels or a linear layer's output units (rows).
    let layer = &mut m.layers[producer];
    let device = match (&mut layer.conv, &mut layer.linear) {
        (Some(c), _) => {
            let device = c.weight.val().device();
            c.weight = Param::from_tensor(c.weight.val().select(0, index_tensor(&kept, &device)));
            if let Some(b) = c.bias.as_mut() {
                *b = select1(b, &kept);
            }
            device
        }
        (_, Some(l)) => {
            let device = l.weight.val().device();
            l.weight = Param::from_tensor(l.weight.val().select(0, index_tensor(&kept, &device)));
            if let Some(b) = l.bias.as_mut() {
                *b = select1(b, &kept);
            }
            device
        }
        _ => return None,
    };
    match &mut m.graph.nodes[producer].op {
        Op::Conv2d { out_channels, .. } => *out_channels = n,
        Op::Linear { out_features, .. } => *out_features = n,
        _ => return None,
    }
    let idx = index_tensor(&kept, &device);
    for &node in chain.iter().chain(&downstream) {
        if let Some(bn) = m.layers[node].bn.as_mut() {
            bn.gamma = select1(&bn.gamma, &kept);
            bn.beta = select1(&bn.beta, &kept);
            let mean = bn.running_mean.value_sync().select(0, idx.clone());
            let var = bn.running_var.value_sync().select(0, idx.clone());
            bn.running_mean = burn::module::RunningState::new(mean);
            bn.running_var = burn::module::RunningState::new(var);
        }
        match &mut m.graph.nodes[node].op {
            Op::BatchNorm { channels, .. } => *channels = n,
            // Another mask on the chain keeps its own pruned channels (of those still kept).
            Op::ChannelMask { keep: other } => *other = kept.iter().map(|&c| other[c]).collect(),
            _ => {}
        }
    }
    for &r in &to_slice_conv {
        let c = m.layers[r].conv.as_mut()?;
        c.weight = Param::from_tensor(c.weight.val().select(1, idx.clone()));
        if let Op::Conv2d { in_channels, .. } = &mut m.graph.nodes[r].op {
            *in_channels = n;
        }
    }
    for &(flat, lin) in &to_slice_linear {
        let hw = flat.map_or(1, |f| shapes[g.nodes[f].inputs[0]].numel() / keep.len());
        let cols: Vec<usize> = kept.iter().flat_map(|&c| c * hw..(c + 1) * hw).collect();
        let l = m.layers[lin].linear.as_mut()?;
        l.weight = Param::from_tensor(l.weight.val().select(1, index_tensor(&cols, &device)));
        if let Op::Linear { in_features, .. } = &mut m.graph.nodes[lin].op {
            *in_features = cols.len();
        }
    }
    // The mask now keeps everything: drop it.
    m.graph = m.graph.remove_passthrough(mask);
    m.layers.remove(mask);
    m.graph.validate().ok()?;
    Some(m)
}

/// Folds every mask that can be folded (fine-pruning's one site or a neuron defense's many);
/// masks that cannot (after a residual addition) stay. Returns the model and whether any mask
/// was folded.
/// Every mask folded that can be: returns the model and the sites whose masks stayed (the
/// pruned channels there are zeroed, not removed), so a caller can say so.
pub fn fold_all(model: &Model) -> (Model, Vec<String>) {
    let mut m = model.clone();
    // Each fold removes a mask node and renumbers the graph: look the next one up afresh, and
    // skip the sites already found unfoldable (by name, which folding keeps).
    let mut stuck: Vec<String> = vec![];
    while let Some(site) = m.graph.nodes.iter().find_map(|n| match &n.op {
        Op::ChannelMask { keep } if keep.iter().any(|k| !k) && !stuck.contains(&n.name) => Some((n.inputs[0], n.name.clone())),
        _ => None,
    }) {
        match fold(&m, site.0) {
            Some(next) => m = next,
            None => stuck.push(site.1),
        }
    }
    (m, stuck)
}
