//! The pruning sweep: accuracy (and, for evaluation only, attack success) after pruning the
//! first k channels of a ranking, for every k.
//!
//! Fast and exact: the prefix up to the site runs once per sample ([`PrefixCache`]); each
//! level re-runs only the suffix. When the suffix starts with per-channel pooling, a flatten and
//! a linear layer (LeNet, signnet, speechnet), that layer's pre-activations are updated
//! incrementally instead: pruning channel c subtracts its contribution `P_c W_c^T`, and only
//! the layers after it run. `naive_accuracies` re-evaluates the full network at every level,
//! for tests and the benchmark.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use super::neurons::with_masks_at;
use super::{PrefixCache, keep_mask, with_mask};
use crate::data::{Normalization, Split, batch};
use crate::metrics::{argmax, predict};
use crate::model::graph::Op;
use crate::model::net::Activation;
use crate::model::Model;

/// Per-level predictions of one split.
pub type LevelPredictions = Vec<Vec<usize>>;

/// If the site's output goes, through one reader each, via per-channel pooling (or eval-time
/// identities) into flatten then linear, returns (pooling nodes, linear node).
fn incremental_path(model: &Model, site: usize) -> Option<(Vec<usize>, usize)> {
    let g = &model.graph;
    let mut i = site;
    let mut pools = vec![];
    loop {
        let readers = g.readers(i);
        let [k] = readers.as_slice() else { return None };
        match &g.nodes[*k].op {
            op if op.keeps_zero() && !matches!(op, Op::ChannelMask { .. }) => pools.push(*k),
            Op::Flatten => {
                let fr = g.readers(*k);
                let [lin] = fr.as_slice() else { return None };
                if !matches!(g.nodes[*lin].op, Op::Linear { .. }) || g.frontier(*lin) != vec![*lin] {
                    return None;
                }
                return Some((pools, *lin));
            }
            _ => return None,
        }
        i = *k;
    }
}

/// Predictions of `model` on the cached split for every number of pruned channels
/// `0..=max_k` following `order`.
pub fn sweep_predictions(model: &Model, cache: &PrefixCache, site: usize, channels: usize, order: &[usize], max_k: usize) -> LevelPredictions {
    let model = model.valid();
    if let Some((pools, lin)) = incremental_path(&model, site) {
        return incremental(&model, cache, site, pools, lin, order, max_k);
    }
    (0..=max_k).map(|k| cache.predict(&with_mask(&model, site, &keep_mask(channels, order, k)))).collect()
}

fn incremental(model: &Model, cache: &PrefixCache, site: usize, pools: Vec<usize>, lin: usize, order: &[usize], max_k: usize) -> LevelPredictions {
    let weight = model.layers[lin].linear.as_ref().expect("linear params").weight.val();
    let [out, fan_in] = weight.dims();
    let device = weight.device();
    let wanted: Vec<usize> = pools.last().map(|&p| vec![p, lin]).unwrap_or(vec![site, lin]);
    // For the whole split, as plain vectors: pooled site activations [n, c, hw] and the linear
    // layer's pre-activations [n, out]. Each level's update is then one small matrix product:
    // as burn ops it was mostly per-operation overhead (slices, a transpose, a matmul and a
    // subtraction per level). Only the layers after the linear one run as tensors.
    let to_vec = |t: burn::tensor::TensorData| t.convert::<f32>().try_into_vec::<f32>().expect("f32 tensor");
    let (mut pooled, mut pre) = (Vec::new(), Vec::new());
    let (mut n, mut channels) = (0, 0);
    for vals in &cache.batches {
        let known = cache.frontier.iter().copied().zip(vals.iter().cloned()).collect();
        let mut v = model.run_cached(cache.start, known, &wanted);
        pre.extend(to_vec(v.pop().expect("two").into_flat().into_data()));
        let p = v.pop().expect("two").into_map();
        [_, channels, _, _] = p.dims();
        n += p.dims()[0];
        pooled.extend(to_vec(p.into_data()));
    }
    if n == 0 {
        return vec![vec![]; max_k + 1];
    }
    let hw = fan_in / channels.max(1);
    // -W, so that a level adds P_c (-W_c)^T into the pre-activations in one multiply.
    let neg_weight: Vec<f32> = to_vec(weight.into_data()).into_iter().map(|w| -w).collect();
    // Samples are independent: one slice of them per thread sweeps every level, and each
    // level's predictions are the slices' in order.
    let rows = n.div_ceil(rayon::current_num_threads().max(1));
    let parts: Vec<LevelPredictions> = pre
        .par_chunks_mut(rows * out)
        .zip(pooled.par_chunks(rows * fan_in))
        .map(|(pre, pooled)| level_rows(model, lin, pre, pooled, &neg_weight, channels, hw, out, order, max_k, &device))
        .collect();
    (0..=max_k).map(|k| parts.iter().flat_map(|p| p[k].iter().copied()).collect()).collect()
}

/// Every level's predictions for the samples (at least one) whose linear pre-activations are
/// `pre` [rows, out] and pooled site activations `pooled` [rows, channels * hw].
#[allow(clippy::too_many_arguments)]
fn level_rows(model: &Model, lin: usize, pre: &mut [f32], pooled: &[f32], neg_weight: &[f32], channels: usize, hw: usize, out: usize, order: &[usize], max_k: usize, device: &Device) -> LevelPredictions {
    let n = pre.len() / out;
    let fan_in = channels * hw;
    let mut levels = Vec::with_capacity(max_k + 1);
    // The layers after the linear one see each sample alone (inference), so several levels'
    // pre-activations stacked into one batch run them once: per level, the run's fixed cost
    // was most of the sweep's time after the prefix pass.
    let mut stacked: Vec<f32> = Vec::with_capacity(LEVELS_PER_RUN * n * out);
    let flush = |stacked: &mut Vec<f32>, levels: &mut LevelPredictions| {
        let rows = stacked.len() / out;
        let pre = Tensor::<2>::from_data(burn::tensor::TensorData::new(std::mem::take(stacked), [rows, out]), device);
        let l = model.run_cached(lin + 1, vec![(lin, Activation::Flat(pre))], &[model.graph.output]).pop().expect("one").into_flat();
        levels.extend(argmax(l).chunks(n).map(<[usize]>::to_vec));
        stacked.reserve(LEVELS_PER_RUN * n * out);
    };
    stacked.extend_from_slice(pre);
    for &c in &order[..max_k] {
        // Channel c feeds linear inputs c*hw .. (c+1)*hw (flatten is channel-major):
        // pre [n, out] += P_c [n, hw] * (-W_c)^T [hw, out], both read in place by strides.
        crate::backend::common::matmul(n, out, hw, pre, true, &pooled[c * hw..], fan_in as isize, 1, &neg_weight[c * hw..], 1, fan_in as isize);
        if stacked.len() == LEVELS_PER_RUN * n * out {
            flush(&mut stacked, &mut levels);
        }
        stacked.extend_from_slice(pre);
    }
    flush(&mut stacked, &mut levels);
    levels
}

/// Pruning levels whose suffix runs as one batch in the incremental sweep.
const LEVELS_PER_RUN: usize = 16;

/// Samples per chunk of [`sweep_split`]: bounds the cached prefix of an evaluation-only curve
/// (a residual network's last block caches 32 KiB per sample; 2,048 samples are 64 MiB).
pub const SWEEP_CHUNK: usize = 2048;

/// [`sweep_predictions`] over a whole split without holding its prefix: the split is cached and
/// swept [`SWEEP_CHUNK`] samples at a time, so memory stays flat in the split's size. One
/// pass over the split; `progress(done, total)` counts samples.
#[allow(clippy::too_many_arguments)]
pub fn sweep_split(model: &Model, split: &Split, norm: &Normalization, site: usize, channels: usize, order: &[usize], max_k: usize, device: &Device, progress: &mut dyn FnMut(usize, usize)) -> LevelPredictions {
    let mut levels: LevelPredictions = vec![Vec::with_capacity(split.len()); max_k + 1];
    let total = split.len();
    let chunk = chunk_at(model, site);
    for start in (0..total).step_by(chunk) {
        let end = (start + chunk).min(total);
        let cache = PrefixCache::build_range(model, split, start..end, norm, site, device, 256, &mut |done, n| progress(start + (end - start) * done / n.max(1), total));
        for (all, chunk) in levels.iter_mut().zip(sweep_predictions(model, &cache, site, channels, order, max_k)) {
            all.extend(chunk);
        }
        progress(end, total);
    }
    levels
}

/// Neuron masks of one pruning level: `(node, keep)` pairs, as [`with_masks`](super::neurons::with_masks) takes them.
pub type NeuronMasks = Vec<(usize, Vec<bool>)>;

/// Bytes a [`PrefixCache`] may hold per chunk of samples: the cut's values for a few thousand
/// images of a small net, fewer images when an early cut of a wide net is larger.
const CACHE_BYTES: usize = 256 << 20;

/// Samples per cached chunk at `cut`: [`SWEEP_CHUNK`], or fewer so that the chunk's frontier
/// values stay within [`CACHE_BYTES`].
fn chunk_at(model: &Model, cut: usize) -> usize {
    let shapes = model.graph.validate().expect("a model that ran is valid");
    let mut frontier = model.graph.frontier(cut);
    frontier.push(cut);
    frontier.dedup();
    let per_sample: usize = frontier.iter().map(|&f| shapes[f].numel().saturating_mul(4)).sum();
    (CACHE_BYTES / per_sample.max(1)).clamp(64, SWEEP_CHUNK)
}

/// Predictions of `model` on `split` under each level's neuron masks (ANP's thresholds): exact,
/// and fast because a level re-runs only what its masks change. Every level's network gets a
/// mask at every masked site (all kept where the level prunes nothing there), so node indices
/// agree between levels; level j then starts at the first node whose mask differs from level
/// j - 1's, from the values the levels before it left there, since nothing before that node
/// differs. A level without masks is the unpruned model. Samples go in batches whose kept
/// values fit [`CACHE_BYTES`]; `progress(done, total)` counts levels.
pub fn masked_predictions(model: &Model, split: &Split, norm: &Normalization, levels: &[NeuronMasks], device: &Device, progress: &mut dyn FnMut(usize, usize)) -> LevelPredictions {
    let model = model.valid();
    let mut sites: Vec<usize> = levels.iter().flatten().map(|(node, _)| *node).collect();
    sites.sort_unstable();
    sites.dedup();
    let units: Vec<usize> = model.graph.validate().expect("a model that ran is valid").iter().map(|s| s.channels()).collect();
    let nets: Vec<Model> = levels.iter().map(|masks| with_masks_at(&model, &units, &sites, masks)).collect();
    let graph = &nets.first().map_or(&model, |m| m).graph;
    // starts[j]: the first node level j must run (1: from the input), None when its network is
    // level j - 1's.
    let starts: Vec<Option<usize>> = nets
        .iter()
        .enumerate()
        .map(|(j, net)| match j {
            0 => Some(1),
            _ => net.graph.nodes.iter().zip(&nets[j - 1].graph.nodes).position(|(a, b)| a.op != b.op),
        })
        .collect();
    // Values a later level reads from before its start, carried from level to level.
    let mut carried: Vec<usize> = starts.iter().flatten().filter(|&&s| s > 1).flat_map(|&s| graph.frontier(s - 1)).collect();
    carried.sort_unstable();
    carried.dedup();
    let shapes = graph.validate().expect("a model that ran is valid");
    let per_sample: usize = carried.iter().map(|&n| shapes[n].numel().saturating_mul(4)).sum();
    let batch_size = (CACHE_BYTES / per_sample.max(1)).clamp(16, 256);
    let output = graph.output;
    // Per level, what it reads from earlier levels and what it leaves for later ones (and the
    // output), the same for every batch.
    let plans: Vec<Option<(usize, Vec<usize>, Vec<usize>)>> = starts
        .iter()
        .map(|s| s.map(|start| (start, graph.frontier(start - 1), carried.iter().copied().filter(|&n| n >= start).chain(std::iter::once(output)).collect())))
        .collect();
    let mut out: LevelPredictions = vec![Vec::with_capacity(split.len()); levels.len()];
    let order: Vec<usize> = (0..split.len()).collect();
    let chunks: Vec<&[usize]> = order.chunks(batch_size).collect();
    for (b, chunk) in chunks.iter().enumerate() {
        let (x, _) = batch(split, chunk, graph.input_shape, norm, device);
        let mut values: Vec<Option<Activation>> = vec![None; graph.nodes.len()];
        values[0] = Some(Activation::Map(x));
        for (j, (net, plan)) in nets.iter().zip(&plans).enumerate() {
            let Some((start, reads, wanted)) = plan else {
                let same = out[j - 1][out[j - 1].len() - chunk.len()..].to_vec();
                out[j].extend(same);
                continue;
            };
            let known = reads.iter().map(|&n| (n, values[n].clone().expect("carried from an earlier level"))).collect();
            let mut got = net.run_cached(*start, known, wanted);
            out[j].extend(argmax(got.pop().expect("the output").into_flat()));
            for (&n, v) in wanted.iter().zip(got) {
                values[n] = Some(v);
            }
        }
        progress(levels.len() * (b + 1) / chunks.len(), levels.len());
    }
    out
}

/// The reference: the full masked network re-evaluated at every level.
pub fn naive_predictions(model: &Model, split: &Split, norm: &Normalization, site: usize, channels: usize, order: &[usize], max_k: usize, device: &Device) -> LevelPredictions {
    (0..=max_k).map(|k| predict(&with_mask(model, site, &keep_mask(channels, order, k)), split, norm, device, 256)).collect()
}
