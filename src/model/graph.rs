//! The one model representation: a small graph IR shared by built-in architectures and (later)
//! imported models. Nodes are in topological order; each names its inputs by index. The graph
//! holds structure only; weights live in [`crate::model::Model`].
//!
//! Graphs also arrive from files we do not trust, so [`Graph::validate`] checks every invariant
//! (order, names, shapes, sizes) before anything is allocated from them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The shape of one sample's activation (the batch dimension is implicit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// Feature map: channels, height, width.
    Map([usize; 3]),
    /// Flat feature vector.
    Flat(usize),
}

impl Shape {
    /// Elements per sample. Saturating: a graph from a file may declare dimensions whose product
    /// overflows, and [`Graph::validate`] must see "too large", not a wrapped small number.
    pub fn numel(&self) -> usize {
        match *self {
            Shape::Map([c, h, w]) => c.saturating_mul(h).saturating_mul(w),
            Shape::Flat(n) => n,
        }
    }

    /// Number of channels: the unit of pruning.
    pub fn channels(&self) -> usize {
        match *self {
            Shape::Map([c, _, _]) => c,
            Shape::Flat(n) => n,
        }
    }
}

/// The layer vocabulary. Closed on purpose: every pass (training, pruning, export) handles
/// every variant, and the compiler says where when one is added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Input,
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        bias: bool,
    },
    BatchNorm { channels: usize, epsilon: f64, momentum: f64 },
    /// Layer normalisation over the channels of each position (ConvNeXt's, on a map) or over
    /// the features (on a flat vector), with a learned scale and shift per channel.
    LayerNorm { channels: usize, epsilon: f64 },
    Relu,
    LeakyRelu { alpha: f64 },
    Sigmoid,
    Tanh,
    /// `min(max(x, min), max)`; PyTorch's ReLU6 is `Clip { min: 0, max: 6 }` (MobileNetV2).
    Clip { min: f64, max: f64 },
    /// `max(0, min(1, alpha x + beta))`, ONNX's HardSigmoid (PyTorch's is alpha 1/6, beta 1/2).
    HardSigmoid { alpha: f64, beta: f64 },
    /// `x * hardsigmoid(x)` with PyTorch's constants (MobileNetV3).
    HardSwish,
    /// `x * sigmoid(x)`, also called swish (EfficientNet, RegNet's SE); exporters write it as
    /// `Mul(x, Sigmoid(x))`, which the importer recognises.
    Silu,
    /// `x * (1 + erf(x / sqrt 2)) / 2`, the exact GELU (ConvNeXt, transformers).
    Gelu,
    MaxPool { kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2], ceil_mode: bool },
    AvgPool {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        ceil_mode: bool,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Flatten,
    Linear { in_features: usize, out_features: usize, bias: bool },
    /// Element-wise sum of all inputs (residual connections, DeepID's two branches).
    Add,
    /// Concatenation along the channel axis.
    Concat,
    /// ShuffleNet's channel shuffle: the channels, viewed as `groups` rows, read column by
    /// column (output channel `j * groups + i` is input channel `i * (C / groups) + j`).
    ChannelShuffle { groups: usize },
    /// Channels `start..end` of the input (a Split or Slice along the channel axis).
    ChannelSlice { start: usize, end: usize },
    /// Element-wise product of two values: equal shapes, or a feature map times a per-channel
    /// gate of shape [C, 1, 1] broadcast over it (squeeze-and-excitation, in either order).
    Mul,
    Dropout { p: f64 },
    /// Multiplies each channel by 1 (kept) or 0 (pruned): a pruned channel's output is exactly
    /// zero for every input, and stays zero through fine-tuning (no parameter to update).
    ChannelMask { keep: Vec<bool> },
    /// A feature map's positions read as a sequence of tokens (a vision transformer's patch
    /// embedding, PyTorch's `flatten(2).transpose(1, 2)`): [C, H, W] -> [C, H*W, 1]. Token
    /// sequences are stored channels-first, as maps of width 1, so a transformer needs few new
    /// ops: its layer norm is a layer norm over channels, its per-token linear layers are 1x1
    /// convolutions, and masks, pruning sites and ANP's neurons apply to them unchanged.
    Tokens,
    /// Prepends a learned token (ViT's class token): [C, T, 1] -> [C, T+1, 1].
    ClassToken { channels: usize },
    /// Adds a learned value per channel and token (ViT's position embedding): [C, T, 1].
    PositionEmbedding { channels: usize, tokens: usize },
    /// Multi-head self-attention over packed queries, keys and values: [3C, T, 1] -> [C, T, 1].
    /// Input channel `p*C + h*(C/heads) + j` is part p (query, key, value), head h, feature j,
    /// PyTorch's packed in-projection; per head `softmax(scale * q k^T) v`, heads concatenated.
    Attention { heads: usize, scale: f64 },
    /// One token of a sequence as a flat vector (the class token a ViT's head reads):
    /// [C, T, 1] -> [C].
    TokenSelect { index: usize },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(flatten)]
    pub op: Op,
    pub inputs: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Per-sample input shape: channels, height, width.
    pub input_shape: [usize; 3],
    pub nodes: Vec<Node>,
    /// Index of the node whose output is the logits.
    pub output: usize,
    /// The node whose output channels are the "last convolutional layer" in the paper's sense:
    /// the final activation of the last conv (after its BatchNorm and ReLU).
    pub prune_site: Option<String>,
}

/// Largest single dimension or element count we accept from a graph (2^28): far beyond any model
/// this tool is for. Products of several such dimensions can still overflow `usize`, so every
/// size product here saturates or is checked, and every node's output and the parameter total
/// are held to these bounds before anything is allocated.
pub const MAX_DIM: usize = 1 << 28;
/// Largest total parameter count (about 1 GiB of f32).
pub const MAX_PARAMS: usize = 1 << 28;

fn check_dim(what: &str, v: usize) -> Result<usize> {
    if v == 0 || v > MAX_DIM {
        return Err(Error::model(format!("{what} = {v} is out of range (1..={MAX_DIM})")));
    }
    Ok(v)
}

fn mul_checked(a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b)
        .filter(|&v| v <= MAX_DIM)
        .ok_or_else(|| Error::model(format!("size {a} x {b} is too large")))
}

/// Output length of a sliding window (conv or pool) along one axis, PyTorch/ONNX semantics.
fn window_out(len: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Result<usize> {
    let span = d * (k - 1) + 1;
    let padded = len + 2 * p;
    if padded < span {
        return Err(Error::model(format!(
            "window of {span} does not fit input of {len} with padding {p}"
        )));
    }
    let num = padded - span;
    let mut out = if ceil { num.div_ceil(s) + 1 } else { num / s + 1 };
    // With ceil mode, the last window must start inside the input or the left padding.
    if ceil && (out - 1) * s >= len + p {
        out -= 1;
    }
    Ok(out)
}

impl Op {
    /// Infers the output shape from the input shapes, checking every constraint the forward
    /// pass relies on.
    pub fn output_shape(&self, inputs: &[Shape]) -> Result<Shape> {
        let one = || -> Result<Shape> {
            match inputs {
                [s] => Ok(*s),
                _ => Err(Error::model(format!("expects 1 input, got {}", inputs.len()))),
            }
        };
        let map = || -> Result<[usize; 3]> {
            match one()? {
                Shape::Map(m) => Ok(m),
                Shape::Flat(_) => Err(Error::model("expects a feature map, got a flat vector")),
            }
        };
        match self {
            Op::Input => Err(Error::model("an input node has no inputs to infer from")),
            Op::Conv2d { in_channels, out_channels, kernel, stride, padding, dilation, groups, .. } => {
                let [c, h, w] = map()?;
                check_dim("conv out_channels", *out_channels)?;
                check_dim("conv groups", *groups)?;
                for v in kernel.iter().chain(stride).chain(dilation) {
                    check_dim("conv kernel/stride/dilation", *v)?;
                }
                if padding.iter().any(|&p| p > MAX_DIM) {
                    return Err(Error::model("conv padding out of range"));
                }
                if c != *in_channels {
                    return Err(Error::model(format!(
                        "conv expects {in_channels} input channels, gets {c}"
                    )));
                }
                if c % groups != 0 || out_channels % groups != 0 {
                    return Err(Error::model(format!(
                        "conv groups {groups} do not divide channels {c} -> {out_channels}"
                    )));
                }
                let oh = window_out(h, kernel[0], stride[0], padding[0], dilation[0], false)?;
                let ow = window_out(w, kernel[1], stride[1], padding[1], dilation[1], false)?;
                Ok(Shape::Map([*out_channels, oh, ow]))
            }
            Op::BatchNorm { channels, epsilon, momentum } => {
                let s = one()?;
                if s.channels() != *channels {
                    return Err(Error::model(format!(
                        "batchnorm has {channels} channels, input has {}",
                        s.channels()
                    )));
                }
                if !(epsilon.is_finite() && *epsilon > 0.0) || !(0.0..=1.0).contains(momentum) {
                    return Err(Error::model("batchnorm epsilon/momentum out of range"));
                }
                Ok(s)
            }
            Op::LayerNorm { channels, epsilon } => {
                let s = one()?;
                if s.channels() != *channels || *channels < 2 {
                    return Err(Error::model(format!("layer norm has {channels} channels, input has {}", s.channels())));
                }
                if !(epsilon.is_finite() && *epsilon > 0.0) {
                    return Err(Error::model("layer norm epsilon out of range"));
                }
                Ok(s)
            }
            Op::Relu | Op::Sigmoid | Op::Tanh | Op::HardSwish | Op::Silu | Op::Gelu => one(),
            Op::Clip { min, max } => {
                // Finite, so the graph's JSON round-trips (an absent ONNX bound is imported as
                // f32's largest value, which bounds nothing an f32 holds).
                if !min.is_finite() || !max.is_finite() || min > max {
                    return Err(Error::model(format!("clip bounds [{min}, {max}] are not an interval")));
                }
                one()
            }
            Op::HardSigmoid { alpha, beta } => {
                if !alpha.is_finite() || !beta.is_finite() {
                    return Err(Error::model(format!("hard sigmoid alpha {alpha} / beta {beta} not finite")));
                }
                one()
            }
            Op::LeakyRelu { alpha } => {
                if !alpha.is_finite() {
                    return Err(Error::model(format!("leaky relu alpha = {alpha} is not finite")));
                }
                one()
            }
            Op::Dropout { p } => {
                if !(0.0..1.0).contains(p) {
                    return Err(Error::model(format!("dropout p = {p} not in [0, 1)")));
                }
                one()
            }
            Op::MaxPool { kernel, stride, padding, ceil_mode }
            | Op::AvgPool { kernel, stride, padding, ceil_mode, .. } => {
                let [c, h, w] = map()?;
                for v in kernel.iter().chain(stride) {
                    check_dim("pool kernel/stride", *v)?;
                }
                if padding[0] * 2 > kernel[0] || padding[1] * 2 > kernel[1] {
                    return Err(Error::model("pool padding must be at most half the kernel"));
                }
                let oh = window_out(h, kernel[0], stride[0], padding[0], 1, *ceil_mode)?;
                let ow = window_out(w, kernel[1], stride[1], padding[1], 1, *ceil_mode)?;
                Ok(Shape::Map([c, oh, ow]))
            }
            Op::GlobalAvgPool => {
                let [c, _, _] = map()?;
                Ok(Shape::Map([c, 1, 1]))
            }
            Op::Flatten => Ok(Shape::Flat(one()?.numel())),
            Op::ChannelMask { keep } => {
                let s = one()?;
                if keep.len() != s.channels() {
                    return Err(Error::model(format!("mask has {} entries for {} channels", keep.len(), s.channels())));
                }
                Ok(s)
            }
            Op::Linear { in_features, out_features, .. } => {
                check_dim("linear out_features", *out_features)?;
                match one()? {
                    Shape::Flat(n) if n == *in_features => Ok(Shape::Flat(*out_features)),
                    s => Err(Error::model(format!(
                        "linear expects a flat vector of {in_features}, gets {s:?}"
                    ))),
                }
            }
            Op::Add => {
                let first = *inputs.first().ok_or_else(|| Error::model("add has no inputs"))?;
                if inputs.len() < 2 || inputs.iter().any(|s| *s != first) {
                    return Err(Error::model(format!("add needs 2+ equal shapes, got {inputs:?}")));
                }
                Ok(first)
            }
            Op::ChannelShuffle { groups } => {
                let s = one()?;
                if !matches!(s, Shape::Map(_)) || *groups == 0 || s.channels() % groups != 0 {
                    return Err(Error::model(format!("channel shuffle of {} channels in {groups} groups", s.channels())));
                }
                Ok(s)
            }
            Op::ChannelSlice { start, end } => match one()? {
                Shape::Map([c, h, w]) if start < end && *end <= c => Ok(Shape::Map([end - start, h, w])),
                Shape::Flat(n) if start < end && *end <= n => Ok(Shape::Flat(end - start)),
                s => Err(Error::model(format!("channels {start}..{end} of {} channels", s.channels()))),
            },
            Op::Mul => match inputs {
                [a, b] if a == b => Ok(*a),
                [Shape::Map([c, h, w]), Shape::Map([c2, 1, 1])] | [Shape::Map([c2, 1, 1]), Shape::Map([c, h, w])] if c == c2 => Ok(Shape::Map([*c, *h, *w])),
                _ => Err(Error::model(format!("mul needs two equal shapes or a map and a [C, 1, 1] gate, got {inputs:?}"))),
            },
            Op::Tokens => {
                let [c, h, w] = map()?;
                Ok(Shape::Map([c, mul_checked(h, w)?, 1]))
            }
            Op::ClassToken { channels } => match map()? {
                [c, t, 1] if c == *channels => Ok(Shape::Map([c, check_dim("tokens", t + 1)?, 1])),
                m => Err(Error::model(format!("class token of {channels} channels for a sequence {m:?}"))),
            },
            Op::PositionEmbedding { channels, tokens } => match map()? {
                [c, t, 1] if c == *channels && t == *tokens => Ok(Shape::Map([c, t, 1])),
                m => Err(Error::model(format!("position embedding of {channels} channels x {tokens} tokens for a sequence {m:?}"))),
            },
            Op::Attention { heads, scale } => match map()? {
                [c3, t, 1] if c3 % 3 == 0 && *heads >= 1 && (c3 / 3) % heads == 0 && scale.is_finite() => Ok(Shape::Map([c3 / 3, t, 1])),
                m => Err(Error::model(format!("attention with {heads} heads (scale {scale}) on packed queries, keys and values {m:?}"))),
            },
            Op::TokenSelect { index } => match map()? {
                [c, t, 1] if *index < t => Ok(Shape::Flat(c)),
                m => Err(Error::model(format!("token {index} of a sequence {m:?}"))),
            },
            Op::Concat => {
                let first = *inputs.first().ok_or_else(|| Error::model("concat has no inputs"))?;
                let mut total = 0usize;
                for s in inputs {
                    total = total
                        .checked_add(s.channels())
                        .ok_or_else(|| Error::model("concat too large"))?;
                    let same_rest = match (first, *s) {
                        (Shape::Map([_, h, w]), Shape::Map([_, h2, w2])) => h == h2 && w == w2,
                        (Shape::Flat(_), Shape::Flat(_)) => true,
                        _ => false,
                    };
                    if !same_rest {
                        return Err(Error::model(format!("concat of mismatched shapes {inputs:?}")));
                    }
                }
                Ok(match first {
                    Shape::Map([_, h, w]) => Shape::Map([check_dim("concat channels", total)?, h, w]),
                    Shape::Flat(_) => Shape::Flat(check_dim("concat features", total)?),
                })
            }
        }
    }

    /// Number of learnable parameters plus running statistics (saturating, like
    /// [`Shape::numel`], so an overflowing declaration reads as too many).
    pub fn param_count(&self) -> usize {
        match *self {
            Op::Conv2d { in_channels, out_channels, kernel, groups, bias, .. } => out_channels
                .saturating_mul(in_channels / groups.max(1))
                .saturating_mul(kernel[0])
                .saturating_mul(kernel[1])
                .saturating_add(if bias { out_channels } else { 0 }),
            Op::BatchNorm { channels, .. } => channels.saturating_mul(4),
            Op::LayerNorm { channels, .. } => channels.saturating_mul(2),
            Op::ClassToken { channels } => channels,
            Op::PositionEmbedding { channels, tokens } => channels.saturating_mul(tokens),
            Op::Linear { in_features, out_features, bias } => {
                in_features.saturating_mul(out_features).saturating_add(if bias { out_features } else { 0 })
            }
            _ => 0,
        }
    }

    pub fn is_conv(&self) -> bool {
        matches!(self, Op::Conv2d { .. })
    }

    /// An element-wise activation function.
    pub fn is_activation(&self) -> bool {
        matches!(self, Op::Relu | Op::LeakyRelu { .. } | Op::Sigmoid | Op::Tanh | Op::Clip { .. } | Op::HardSigmoid { .. } | Op::HardSwish | Op::Silu | Op::Gelu)
    }

    /// Maps each channel to the same channel, reading no other: a pruned channel stays a
    /// separate channel through it.
    pub fn is_per_channel(&self) -> bool {
        self.is_activation()
            || matches!(
                self,
                Op::MaxPool { .. } | Op::AvgPool { .. } | Op::GlobalAvgPool | Op::Dropout { .. } | Op::ChannelMask { .. } | Op::BatchNorm { .. } | Op::Tokens | Op::TokenSelect { .. }
            )
    }

    /// Per-channel and maps an all-zero channel to an all-zero channel (so a pruned channel
    /// stays exactly zero through it). Sigmoid (0 -> 0.5), a hard sigmoid (0 -> beta), a clip
    /// whose interval excludes 0 and BatchNorm (0 -> its shift) do not.
    pub fn keeps_zero(&self) -> bool {
        let moves_zero = match *self {
            Op::Sigmoid | Op::HardSigmoid { .. } | Op::BatchNorm { .. } => true,
            Op::Clip { min, max } => min > 0.0 || max < 0.0,
            _ => false,
        };
        self.is_per_channel() && !moves_zero
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | ':'))
}

impl Graph {
    /// Checks every structural invariant and returns the per-node output shapes.
    pub fn validate(&self) -> Result<Vec<Shape>> {
        let [c, h, w] = self.input_shape;
        for (what, v) in [("input channels", c), ("input height", h), ("input width", w)] {
            check_dim(what, v)?;
        }
        mul_checked(mul_checked(c, h)?, w)?;
        if self.nodes.is_empty() || self.nodes[0].op != Op::Input || !self.nodes[0].inputs.is_empty() {
            return Err(Error::model("node 0 must be the single input node"));
        }
        let mut names = std::collections::HashSet::new();
        let mut shapes = Vec::with_capacity(self.nodes.len());
        let mut params = 0usize;
        for (i, node) in self.nodes.iter().enumerate() {
            if !valid_name(&node.name) {
                return Err(Error::model(format!("node {i} has an invalid name {:?}", node.name)));
            }
            if !names.insert(node.name.as_str()) {
                return Err(Error::model(format!("node name {:?} is used twice", node.name)));
            }
            let shape = if i == 0 {
                Shape::Map(self.input_shape)
            } else {
                if node.op == Op::Input {
                    return Err(Error::model(format!("node {:?}: only node 0 may be the input", node.name)));
                }
                // Inputs must come earlier: this is what makes the order topological and
                // rules out cycles.
                if node.inputs.is_empty() || node.inputs.iter().any(|&j| j >= i) {
                    return Err(Error::model(format!(
                        "node {:?} reads {:?}: inputs must be earlier nodes (no cycles, no dangling inputs)",
                        node.name, node.inputs
                    )));
                }
                let ins: Vec<Shape> = node.inputs.iter().map(|&j| shapes[j]).collect();
                node.op
                    .output_shape(&ins)
                    .map_err(|e| Error::model(format!("node {:?}: {}", node.name, strip(&e))))?
            };
            mul_checked(shape.numel(), 1)?;
            params = params
                .checked_add(node.op.param_count())
                .filter(|&p| p <= MAX_PARAMS)
                .ok_or_else(|| Error::model(format!("more than {MAX_PARAMS} parameters")))?;
            shapes.push(shape);
        }
        if self.output >= self.nodes.len() {
            return Err(Error::model(format!("output index {} has no node", self.output)));
        }
        if !matches!(shapes[self.output], Shape::Flat(_)) {
            return Err(Error::model("the output node must produce a flat vector of logits"));
        }
        if let Some(site) = &self.prune_site {
            let idx = self.index_of(site)?;
            if !matches!(shapes[idx], Shape::Map(_)) {
                return Err(Error::model(format!("prune site {site:?} is not a feature map")));
            }
        }
        Ok(shapes)
    }

    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| Error::invalid(format!("no layer named {name:?} in the model")))
    }

    pub fn num_classes(&self) -> Result<usize> {
        Ok(self.validate()?[self.output].numel())
    }

    pub fn param_count(&self) -> usize {
        self.nodes.iter().map(|n| n.op.param_count()).fold(0, usize::saturating_add)
    }

    /// The nodes that read node `i`'s output (nodes are topologically ordered, so all after it).
    pub fn readers(&self, i: usize) -> Vec<usize> {
        (i + 1..self.nodes.len()).filter(|&k| self.nodes[k].inputs.contains(&i)).collect()
    }

    /// Indices of the nodes at or before `cut` whose values nodes after `cut` read: what must
    /// be cached to run the rest of the graph without re-running its start.
    pub fn frontier(&self, cut: usize) -> Vec<usize> {
        let mut f: Vec<usize> = self.nodes[cut + 1..].iter().flat_map(|n| n.inputs.iter().copied()).filter(|&j| j <= cut).collect();
        f.sort_unstable();
        f.dedup();
        f
    }

    /// A copy without node `i`, a single-input pass-through (e.g. a mask): its readers read its
    /// input instead.
    pub fn remove_passthrough(&self, i: usize) -> Graph {
        let src = self.nodes[i].inputs[0];
        let fix = |j: usize| if j == i { src } else if j > i { j - 1 } else { j };
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, n)| Node { name: n.name.clone(), op: n.op.clone(), inputs: n.inputs.iter().map(|&j| fix(j)).collect() })
            .collect();
        Graph { input_shape: self.input_shape, nodes, output: fix(self.output), prune_site: self.prune_site.clone() }
    }

    /// A copy with a node inserted right after `site`, reading `site`; every other reader of
    /// `site` reads the new node instead. Returns the graph and the new node's index.
    pub fn insert_after(&self, site: usize, name: String, op: Op) -> (Graph, usize) {
        let at = site + 1;
        let shift = |j: usize| if j >= at { j + 1 } else { j };
        let mut nodes: Vec<Node> = self
            .nodes
            .iter()
            .map(|n| Node { name: n.name.clone(), op: n.op.clone(), inputs: n.inputs.iter().map(|&j| if j == site { at } else { shift(j) }).collect() })
            .collect();
        nodes.insert(at, Node { name, op, inputs: vec![site] });
        let output = if self.output == site { at } else { shift(self.output) };
        (Graph { input_shape: self.input_shape, nodes, output, prune_site: self.prune_site.clone() }, at)
    }
}

/// The message of a model error without its "invalid model:" prefix (for errors nested in another).
pub(crate) fn strip(e: &Error) -> String {
    match e {
        Error::Model(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Builds graphs layer by layer, inferring each layer's input size from the shapes so far.
/// Architecture code then reads like a layer list.
pub struct GraphBuilder {
    graph: Graph,
    shapes: Vec<Shape>,
}

impl GraphBuilder {
    pub fn new(input_shape: [usize; 3]) -> Self {
        let input = Node { name: "input".into(), op: Op::Input, inputs: vec![] };
        GraphBuilder {
            graph: Graph { input_shape, nodes: vec![input], output: 0, prune_site: None },
            shapes: vec![Shape::Map(input_shape)],
        }
    }

    /// Adds a node. Panics on an inconsistent layer: builders are our own code, so a mistake
    /// here is a bug in an architecture definition, caught by its unit test.
    pub fn add(&mut self, name: &str, op: Op, inputs: &[usize]) -> usize {
        let ins: Vec<Shape> = inputs.iter().map(|&i| self.shapes[i]).collect();
        let shape = op
            .output_shape(&ins)
            .unwrap_or_else(|e| panic!("architecture bug at {name}: {e}"));
        self.graph.nodes.push(Node { name: name.into(), op, inputs: inputs.to_vec() });
        self.shapes.push(shape);
        self.graph.nodes.len() - 1
    }

    pub fn conv(&mut self, name: &str, x: usize, out: usize, k: usize, stride: usize, pad: usize) -> usize {
        self.conv_ext(name, x, out, k, stride, pad, true)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn conv_ext(&mut self, name: &str, x: usize, out: usize, k: usize, stride: usize, pad: usize, bias: bool) -> usize {
        let op = Op::Conv2d {
            in_channels: self.shapes[x].channels(),
            out_channels: out,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad, pad],
            dilation: [1, 1],
            groups: 1,
            bias,
        };
        self.add(name, op, &[x])
    }

    pub fn bn(&mut self, name: &str, x: usize) -> usize {
        let channels = self.shapes[x].channels();
        self.add(name, Op::BatchNorm { channels, epsilon: 1e-5, momentum: 0.1 }, &[x])
    }

    pub fn relu(&mut self, name: &str, x: usize) -> usize {
        self.add(name, Op::Relu, &[x])
    }

    pub fn max_pool(&mut self, name: &str, x: usize, k: usize, stride: usize) -> usize {
        let op = Op::MaxPool { kernel: [k, k], stride: [stride, stride], padding: [0, 0], ceil_mode: false };
        self.add(name, op, &[x])
    }

    pub fn flatten(&mut self, name: &str, x: usize) -> usize {
        self.add(name, Op::Flatten, &[x])
    }

    pub fn linear(&mut self, name: &str, x: usize, out: usize) -> usize {
        let op = Op::Linear { in_features: self.shapes[x].numel(), out_features: out, bias: true };
        self.add(name, op, &[x])
    }

    pub fn dropout(&mut self, name: &str, x: usize, p: f64) -> usize {
        self.add(name, Op::Dropout { p }, &[x])
    }

    pub fn finish(mut self, output: usize, prune_site: &str) -> Graph {
        self.graph.output = output;
        self.graph.prune_site = Some(prune_site.to_string());
        self.graph.validate().unwrap_or_else(|e| panic!("architecture bug: {e}"));
        self.graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Graph {
        let mut b = GraphBuilder::new([1, 8, 8]);
        let c = b.conv("conv", 0, 4, 3, 1, 1);
        let r = b.relu("relu", c);
        let p = b.max_pool("pool", r, 2, 2);
        let f = b.flatten("flat", p);
        let l = b.linear("fc", f, 3);
        b.finish(l, "relu")
    }

    #[test]
    fn shapes_follow_pytorch_rules() {
        let g = tiny();
        let s = g.validate().unwrap();
        assert_eq!(s[1], Shape::Map([4, 8, 8]));
        assert_eq!(s[3], Shape::Map([4, 4, 4]));
        assert_eq!(s[5], Shape::Flat(3));
        // ceil mode: 5 -> (5-2)/2 ceil = 2, +1 = 3 windows.
        assert_eq!(window_out(5, 2, 2, 0, 1, true).unwrap(), 3);
        assert_eq!(window_out(5, 2, 2, 0, 1, false).unwrap(), 2);
        // ceil mode never starts a window in the right padding.
        assert_eq!(window_out(4, 2, 2, 1, 1, true).unwrap(), 3);
    }

    #[test]
    fn json_round_trip_is_identity() {
        let g = tiny();
        let json = serde_json::to_string(&g).unwrap();
        let back: Graph = serde_json::from_str(&json).unwrap();
        assert_eq!(g, back);
    }

    #[test]
    fn forward_references_and_bad_channels_are_rejected() {
        let mut g = tiny();
        g.nodes[2].inputs = vec![3];
        assert!(g.validate().unwrap_err().to_string().contains("earlier nodes"));

        let mut g = tiny();
        if let Op::Conv2d { in_channels, .. } = &mut g.nodes[1].op {
            *in_channels = 2;
        }
        assert!(g.validate().unwrap_err().to_string().contains("input channels"));

        let mut g = tiny();
        g.nodes[4].name = "conv".into();
        assert!(g.validate().unwrap_err().to_string().contains("used twice"));

        let mut g = tiny();
        if let Op::Linear { out_features, .. } = &mut g.nodes[5].op {
            *out_features = MAX_DIM + 1;
        }
        assert!(g.validate().is_err());
    }

    #[test]
    fn a_shape_whose_size_overflows_is_refused_not_wrapped() {
        // 1024 channels at 2^27 x 2^27 is 2^64 elements: wrapped, that is 0, which passed.
        let g = Graph {
            input_shape: [1024, 1, 1],
            nodes: vec![
                Node { name: "x".into(), op: Op::Input, inputs: vec![] },
                Node {
                    name: "dw".into(),
                    op: Op::Conv2d { in_channels: 1024, out_channels: 1024, kernel: [2, 2], stride: [1, 1], padding: [1 << 26, 1 << 26], dilation: [1, 1], groups: 1024, bias: false },
                    inputs: vec![0],
                },
                Node { name: "flat".into(), op: Op::Flatten, inputs: vec![1] },
                Node { name: "fc".into(), op: Op::Linear { in_features: 0, out_features: 2, bias: true }, inputs: vec![2] },
            ],
            output: 3,
            prune_site: None,
        };
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        // Parameter counts saturate too: [2^28, 2^28, 2^28, 2^28] weights are not zero of them.
        let op = Op::Conv2d { in_channels: 1 << 28, out_channels: 1 << 28, kernel: [1 << 28, 1 << 28], stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1, bias: true };
        assert_eq!(op.param_count(), usize::MAX);
    }
}
