//! Folding a mask: physically removing pruned channels. The producing convolution loses
//! output channels (and its BatchNorm the matching statistics), and every consumer loses the
//! matching inputs: a convolution's input channels, or a linear layer's input columns after a
//! flatten. The folded model computes the same function as the masked one, with fewer
//! weights.
//!
//! Folding needs a site reached from one convolution through per-channel layers only
//! (BatchNorm, ReLU, pooling, dropout). A site after a residual addition cannot be folded (the
//! skip path carries the channel too); [`fold`] then returns `None` and the mask stays.

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
    let conv = loop {
        match &g.nodes[i].op {
            Op::Conv2d { groups: 1, .. } => break i,
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
                    to_slice_linear.push((r, lin));
                }
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
    let device = m.layers[conv].conv.as_ref()?.weight.val().device();
    let idx = index_tensor(&kept, &device);
    let n = kept.len();
    // The producing convolution: output channels.
    {
        let c = m.layers[conv].conv.as_mut()?;
        c.weight = Param::from_tensor(c.weight.val().select(0, idx.clone()));
        if let Some(b) = c.bias.as_mut() {
            *b = select1(b, &kept);
        }
        if let Op::Conv2d { out_channels, .. } = &mut m.graph.nodes[conv].op {
            *out_channels = n;
        }
    }
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
            Op::ChannelMask { keep } => *keep = vec![true; n],
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
        let hw = shapes[g.nodes[flat].inputs[0]].numel() / keep.len();
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
