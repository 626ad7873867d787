//! Pruning machinery: which channels (the *site*), how active they are on clean data, masks,
//! and the fast sweep.
//!
//! The sweep is exact and fast because the layers before the site do not change while
//! pruning: their output at the graph's frontier is computed once per sample ([`PrefixCache`]),
//! and each pruning level re-runs only the rest of the network.

pub mod fold;
pub mod neurons;
pub mod noise;
pub mod sweep;

use burn::module::Module;
use burn::tensor::Device;

use crate::data::{Normalization, Split, batch};
use crate::error::{Error, Result};
use crate::metrics::argmax;
use crate::model::graph::{Op, Shape};
use crate::model::net::{Activation, LayerParams};
use crate::model::Model;
use crate::progress::Progress;

/// The node whose output channels are pruned.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Site {
    pub index: usize,
    pub name: String,
    pub channels: usize,
    /// Why this node: printed so the user sees what is being pruned.
    pub reason: String,
}

/// The prune site: `layer` if given, else the architecture's declared site, else the final
/// activation of the last convolution (following its BatchNorm/ReLU chain).
pub fn find_site(model: &Model, layer: Option<&str>) -> Result<Site> {
    let g = &model.graph;
    let shapes = g.validate()?;
    let (index, reason) = match (layer, &g.prune_site) {
        (Some(name), _) => {
            let i = g.index_of(name)?;
            // A convolution's channels are pruned where they take their final form.
            match candidate_sites(g).into_iter().find(|&(conv, _)| conv == i) {
                Some((_, act)) if act != i => (act, format!("chosen with --layer: convolution {name:?}, after its BatchNorm/activation")),
                _ => (i, "chosen with --layer".to_string()),
            }
        }
        (None, Some(name)) => (g.index_of(name)?, "the architecture's last convolutional layer, at its final activation".to_string()),
        (None, None) => {
            let (conv, i) = last_conv_site(g).ok_or_else(|| Error::invalid("the model has no convolutional layer to prune"))?;
            if is_transformer(g) {
                (i, format!("the hidden units of the last MLP {:?}, after its activation (a transformer's per-token linear layers are 1x1 convolutions here)", g.nodes[conv].name))
            } else {
                (i, format!("the last convolution {:?}, after its BatchNorm/activation (and residual add, if any)", g.nodes[conv].name))
            }
        }
    };
    let Shape::Map([channels, _, _]) = shapes[index] else {
        return Err(Error::invalid(format!("layer {:?} is not a feature map; pick a convolutional layer", g.nodes[index].name)));
    };
    Ok(Site { index, name: g.nodes[index].name.clone(), channels, reason })
}

/// Where the channels of convolution `conv` take their final form: the single-reader chain
/// through BatchNorm and activations (and, with `through_add`, a residual addition, whose
/// output has the same channels), stopping before pooling, flatten or anything that mixes
/// channels.
fn final_form(g: &crate::model::Graph, conv: usize, through_add: bool) -> usize {
    let mut i = conv;
    loop {
        match g.readers(i).as_slice() {
            [k] if matches!(g.nodes[*k].op, Op::BatchNorm { .. }) || g.nodes[*k].op.is_activation() || (through_add && g.nodes[*k].op == Op::Add) => i = *k,
            _ => return i,
        }
    }
}

/// Does the graph attend (a vision transformer)?
fn is_transformer(g: &crate::model::Graph) -> bool {
    g.nodes.iter().any(|n| matches!(n.op, Op::Attention { .. }))
}

/// The last convolution and where its channels take their final form (after a residual
/// addition too): the paper's prune site when the graph does not name one. In a transformer
/// the last convolution is the last MLP's output projection, whose channels are the residual
/// stream every block writes to; the units there are the MLP's hidden ones, after its
/// activation (the last convolution an activation reads).
pub fn last_conv_site(g: &crate::model::Graph) -> Option<(usize, usize)> {
    if is_transformer(g) {
        let hidden = (0..g.nodes.len()).rev().find(|&i| g.nodes[i].op.is_conv() && matches!(g.readers(i).as_slice(), [k] if g.nodes[*k].op.is_activation()));
        if let Some(conv) = hidden {
            return Some((conv, final_form(g, conv, false)));
        }
    }
    let conv = g.nodes.iter().rposition(|n| n.op.is_conv())?;
    Some((conv, final_form(g, conv, true)))
}

/// Every convolution with the node where its channels take their final form (after
/// BatchNorm/activation): the layers a user may pick with `--layer`.
pub fn candidate_sites(g: &crate::model::Graph) -> Vec<(usize, usize)> {
    (0..g.nodes.len()).filter(|&i| g.nodes[i].op.is_conv()).map(|conv| (conv, final_form(g, conv, false))).collect()
}

/// Mean activation of each channel of `site` over `split`: the spatial mean per sample, then
/// the mean over samples, accumulated batch by batch (memory flat in the dataset size).
pub fn channel_means(model: &Model, split: &Split, norm: &Normalization, site: usize, device: &Device, batch_size: usize, progress: &mut dyn Progress) -> Result<Vec<f64>> {
    if split.is_empty() {
        return Err(Error::invalid("no clean samples to rank channels on"));
    }
    let model = model.valid();
    let shape = model.graph.input_shape;
    let mut sums: Vec<f64> = Vec::new();
    let order: Vec<usize> = (0..split.len()).collect();
    for chunk in order.chunks(batch_size.max(1)) {
        let (x, _) = batch(split, chunk, shape, norm, device);
        add_channel_sums(&mut sums, model.activations(x, &[site]).pop().expect("one").into_map())?;
        progress.work(chunk[chunk.len() - 1] + 1, split.len());
    }
    Ok(sums.into_iter().map(|s| s / split.len() as f64).collect())
}

/// Adds a batch's per-sample spatial mean of each channel to `sums`: [n, c, h, w] -> per-sample
/// means [n, c] -> summed over the batch [c].
fn add_channel_sums(sums: &mut Vec<f64>, act: burn::tensor::Tensor<4>) -> Result<()> {
    let per_channel = act.mean_dim(3).mean_dim(2).sum_dim(0);
    let v = per_channel.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::model(format!("{e:?}")))?;
    if sums.is_empty() {
        *sums = vec![0.0; v.len()];
    }
    for (s, x) in sums.iter_mut().zip(v) {
        *s += x as f64;
    }
    Ok(())
}

/// Channels in pruning order: increasing mean activation (ties by index, so the order is
/// deterministic).
pub fn ranking(means: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..means.len()).collect();
    order.sort_by(|&a, &b| means[a].total_cmp(&means[b]).then(a.cmp(&b)));
    order
}

/// Index of the mask node directly after `site`, if there is one.
pub fn mask_of(model: &Model, site: usize) -> Option<usize> {
    let g = &model.graph;
    (site + 1 < g.nodes.len() && matches!(g.nodes[site + 1].op, Op::ChannelMask { .. }) && g.nodes[site + 1].inputs == [site]).then_some(site + 1)
}

/// A copy of `model` whose `site` channels are multiplied by `keep` (an existing mask there is
/// replaced). Weights are shared, not copied.
pub fn with_mask(model: &Model, site: usize, keep: &[bool]) -> Model {
    let mut m = model.clone();
    let op = Op::ChannelMask { keep: keep.to_vec() };
    match mask_of(model, site) {
        Some(i) => m.graph.nodes[i].op = op,
        None => {
            let name = format!("{}.mask", m.graph.nodes[site].name);
            let (graph, at) = m.graph.insert_after(site, name, op);
            m.graph = graph;
            m.layers.insert(at, LayerParams::none());
        }
    }
    m
}

/// The kept-channel mask when the first `k` channels of `order` are pruned.
pub fn keep_mask(channels: usize, order: &[usize], k: usize) -> Vec<bool> {
    let mut keep = vec![true; channels];
    for &c in &order[..k] {
        keep[c] = false;
    }
    keep
}

/// The graph's values at the frontier of a site, for every sample of a split, computed once.
pub struct PrefixCache {
    /// The first node after the cut (the site itself is at `start - 1`).
    pub start: usize,
    pub frontier: Vec<usize>,
    pub batches: Vec<Vec<Activation>>,
    pub labels: Vec<usize>,
}

impl PrefixCache {
    /// Runs the unpruned `model` up to `site` on `split` and keeps the frontier values.
    pub fn build(model: &Model, split: &Split, norm: &Normalization, site: usize, device: &Device, batch_size: usize) -> PrefixCache {
        Self::build_range(model, split, 0..split.len(), norm, site, device, batch_size, &mut |_, _| {})
    }

    /// [`build`](Self::build) over the samples `range` of `split`, calling `progress(done,
    /// total)` after each batch.
    #[allow(clippy::too_many_arguments)]
    pub fn build_range(model: &Model, split: &Split, range: std::ops::Range<usize>, norm: &Normalization, site: usize, device: &Device, batch_size: usize, progress: &mut dyn FnMut(usize, usize)) -> PrefixCache {
        let model = model.valid();
        // The site's own value is always kept: the ranking is read from it.
        let mut frontier = model.graph.frontier(site);
        if !frontier.contains(&site) {
            frontier.push(site);
        }
        let shape = model.graph.input_shape;
        let order: Vec<usize> = range.clone().collect();
        let chunks: Vec<&[usize]> = order.chunks(batch_size.max(1)).collect();
        let mut batches = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let (x, _) = batch(split, chunk, shape, norm, device);
            batches.push(model.activations(x, &frontier));
            progress(i + 1, chunks.len());
        }
        PrefixCache { start: site + 1, frontier, batches, labels: split.labels[range].to_vec() }
    }

    /// Mean activation of each channel of the site (as [`channel_means`]) from the cached
    /// values: the ranking comes from the pass that filled the cache.
    pub fn channel_means(&self) -> Result<Vec<f64>> {
        if self.labels.is_empty() {
            return Err(Error::invalid("no clean samples to rank channels on"));
        }
        let site = self.start - 1;
        let at = self.frontier.iter().position(|&f| f == site).expect("the site's value is cached");
        let mut sums: Vec<f64> = Vec::new();
        for vals in &self.batches {
            add_channel_sums(&mut sums, vals[at].clone().into_map())?;
        }
        Ok(sums.into_iter().map(|s| s / self.labels.len() as f64).collect())
    }

    /// Predictions of `model` (which must agree with the cached model up to the cut; it may
    /// differ after it, e.g. by a mask) from the cached prefix.
    pub fn predict(&self, model: &Model) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.labels.len());
        for vals in &self.batches {
            let known = self.frontier.iter().copied().zip(vals.iter().cloned()).collect();
            let logits = model.run_cached(self.start, known, &[model.graph.output]).pop().expect("one").into_flat();
            out.extend(argmax(logits));
        }
        out
    }
}
