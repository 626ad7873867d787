//! The model as a burn module: the graph's weights plus one interpreter that runs the graph.
//! The same `forward` trains (on an autodiff device) and evaluates, so there is exactly one
//! definition of what a model computes.

use burn::module::{Module, Param, RunningState};
use burn::tensor::activation::{hard_sigmoid, hard_swish, leaky_relu, sigmoid};
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::backend::ops::{add, channel_affine, clip, conv2d, gelu, max_pool2d, relu, silu};
use crate::model::graph::{Graph, Op, Shape};
use crate::rng::Rng;

#[derive(Module, Debug)]
pub struct ConvParams {
    /// [out, in/groups, kh, kw], PyTorch/ONNX layout.
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
}

#[derive(Module, Debug)]
pub struct BatchNormParams {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
}

#[derive(Module, Debug)]
pub struct LayerNormParams {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
pub struct LinearParams {
    /// [out, in], PyTorch/ONNX layout (burn's own `Linear` stores [in, out]).
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

/// Learned values added to or prepended to a token sequence (class token, position embedding).
#[derive(Module, Debug)]
pub struct EmbedParams {
    /// [channels, tokens]: channels-first, like the sequences they join (PyTorch stores
    /// [1, tokens, channels]).
    pub weight: Param<Tensor<2>>,
}

/// The weights of one node; at most one field is set, matching the node's op.
#[derive(Module, Debug)]
pub struct LayerParams {
    pub conv: Option<ConvParams>,
    pub bn: Option<BatchNormParams>,
    pub linear: Option<LinearParams>,
    pub ln: Option<LayerNormParams>,
    pub embed: Option<EmbedParams>,
}

impl LayerParams {
    /// No weights: the layer of every op without parameters.
    pub fn none() -> LayerParams {
        LayerParams { conv: None, bn: None, linear: None, ln: None, embed: None }
    }
}

#[derive(Module, Debug)]
pub struct Model {
    /// One entry per graph node, index-aligned with `graph.nodes`.
    pub layers: Vec<LayerParams>,
    #[module(skip)]
    pub graph: Graph,
}

/// Rewrites node outputs as the interpreter produces them: how a defense puts learnable or noisy
/// per-neuron scales beside frozen weights (adversarial neuron pruning) without copying the
/// model or adding graph nodes.
pub trait NodeHook {
    /// Called with node `node`'s output; returns the value every later node reads instead.
    fn after(&self, node: usize, out: Activation) -> Activation;
}

/// How a run treats the layers that behave differently in training.
pub enum Mode<'a> {
    /// BatchNorm uses its running statistics, dropout is the identity.
    Eval,
    /// BatchNorm uses and updates batch statistics, dropout draws its masks from the generator.
    Train(&'a mut Rng),
    /// BatchNorm normalises with batch statistics but leaves its running statistics alone;
    /// dropout is the identity (a frozen model probed in training-mode normalisation).
    BatchStats,
}

/// An intermediate value: feature maps are rank 4, flat features rank 2.
#[derive(Clone, Debug)]
pub enum Activation {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

impl Activation {
    pub fn into_map(self) -> Tensor<4> {
        match self {
            Activation::Map(t) => t,
            Activation::Flat(t) => {
                let [n, c] = t.dims();
                t.reshape([n, c, 1, 1])
            }
        }
    }

    pub fn into_flat(self) -> Tensor<2> {
        match self {
            Activation::Flat(t) => t,
            Activation::Map(t) => {
                let [n, c, h, w] = t.dims();
                t.reshape([n, c * h * w])
            }
        }
    }
}

fn param1(values: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = values.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(values, [n]), device))
}

impl Model {
    /// Builds a model with freshly initialised weights: He-uniform weights (suited to ReLU
    /// networks) and PyTorch-style uniform biases, drawn from our own seeded generator so the
    /// same seed gives the same network on every platform.
    pub fn init(graph: Graph, seed: u64, device: &Device) -> Result<Model> {
        Model::build(graph, Some(seed), device)
    }

    /// Builds a model whose weights are zeros, for loaders that set every tensor from a file
    /// (and refuse a file that leaves one unset): drawing random weights only to overwrite them
    /// took a third of the time of loading a small model.
    pub fn zeroed(graph: Graph, device: &Device) -> Result<Model> {
        Model::build(graph, None, device)
    }

    fn build(graph: Graph, seed: Option<u64>, device: &Device) -> Result<Model> {
        graph.validate()?;
        let mut rng = seed.map(Rng::new);
        let mut uniform = |n: usize, bound: f64| -> Vec<f32> {
            match rng.as_mut() {
                Some(rng) => (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect(),
                None => vec![0.0; n],
            }
        };
        let layers = graph
            .nodes
            .iter()
            .map(|node| match node.op {
                Op::Conv2d { in_channels, out_channels, kernel, groups, bias, .. } => {
                    let fan_in = (in_channels / groups) * kernel[0] * kernel[1];
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    let shape = [out_channels, in_channels / groups, kernel[0], kernel[1]];
                    let w = uniform(shape.iter().product(), bound * 6f64.sqrt());
                    let weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, shape), device));
                    let bias = bias.then(|| param1(uniform(out_channels, bound), device));
                    LayerParams { conv: Some(ConvParams { weight, bias }), ..LayerParams::none() }
                }
                Op::BatchNorm { channels, .. } => LayerParams {
                    conv: None,
                    bn: Some(BatchNormParams {
                        gamma: param1(vec![1.0; channels], device),
                        beta: param1(vec![0.0; channels], device),
                        running_mean: RunningState::new(Tensor::zeros([channels], device)),
                        running_var: RunningState::new(Tensor::ones([channels], device)),
                    }),
                    ..LayerParams::none()
                },
                Op::Linear { in_features, out_features, bias } => {
                    let bound = 1.0 / (in_features as f64).sqrt();
                    let w = uniform(in_features * out_features, bound * 6f64.sqrt());
                    let weight = Param::from_tensor(Tensor::from_data(
                        TensorData::new(w, [out_features, in_features]),
                        device,
                    ));
                    let bias = bias.then(|| param1(uniform(out_features, bound), device));
                    LayerParams { linear: Some(LinearParams { weight, bias }), ..LayerParams::none() }
                }
                Op::LayerNorm { channels, .. } => LayerParams {
                    ln: Some(LayerNormParams { gamma: param1(vec![1.0; channels], device), beta: param1(vec![0.0; channels], device) }),
                    ..LayerParams::none()
                },
                Op::ClassToken { channels } | Op::PositionEmbedding { channels, .. } => {
                    let tokens = match node.op {
                        Op::PositionEmbedding { tokens, .. } => tokens,
                        _ => 1,
                    };
                    // Small, as PyTorch's ViT initialises them (normal, std 0.02).
                    let w = uniform(channels * tokens, 0.02 * 3f64.sqrt());
                    let weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, [channels, tokens]), device));
                    LayerParams { embed: Some(EmbedParams { weight }), ..LayerParams::none() }
                }
                _ => LayerParams::none(),
            })
            .collect();
        Ok(Model { layers, graph })
    }

    /// Logits for a batch, in evaluation mode (BatchNorm uses running statistics, no dropout).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let out = self.graph.output;
        self.run(x, None, &[out]).pop().expect("one output").into_flat()
    }

    /// Logits for a batch in training mode: BatchNorm uses and updates batch statistics,
    /// dropout draws its masks from `rng`.
    pub fn forward_train(&self, x: Tensor<4>, rng: &mut Rng) -> Tensor<2> {
        let out = self.graph.output;
        self.run(x, Some(rng), &[out]).pop().expect("one output").into_flat()
    }

    /// The outputs of the named nodes for a batch (evaluation mode): the named layers and
    /// per-channel activations that inspection and pruning read.
    pub fn activations(&self, x: Tensor<4>, nodes: &[usize]) -> Vec<Activation> {
        self.run(x, None, nodes)
    }

    /// Logits for a batch with `hook` applied to every node's output.
    pub fn forward_hooked(&self, x: Tensor<4>, mode: Mode, hook: &dyn NodeHook) -> Tensor<2> {
        let out = self.graph.output;
        self.run_from(1, vec![(0, Activation::Map(x))], mode, Some(hook), &[out]).pop().expect("one output").into_flat()
    }

    fn run(&self, x: Tensor<4>, rng: Option<&mut Rng>, wanted: &[usize]) -> Vec<Activation> {
        let mode = match rng {
            Some(r) => Mode::Train(r),
            None => Mode::Eval,
        };
        self.run_from(1, vec![(0, Activation::Map(x))], mode, None, wanted)
    }

    /// Runs nodes `start..` in evaluation mode from known values of earlier nodes (a cached
    /// prefix: the [`Graph::frontier`] of `start - 1`) and returns the values of `wanted`.
    pub fn run_cached(&self, start: usize, known: Vec<(usize, Activation)>, wanted: &[usize]) -> Vec<Activation> {
        self.run_from(start, known, Mode::Eval, None, wanted)
    }

    /// Runs the graph up to the last of `wanted` and returns their values in order.
    fn run_from(&self, start: usize, known: Vec<(usize, Activation)>, mut mode: Mode, hook: Option<&dyn NodeHook>, wanted: &[usize]) -> Vec<Activation> {
        let nodes = &self.graph.nodes;
        let stop = wanted.iter().copied().max().unwrap_or(0);
        // Free each value after its last reader so peak memory is the graph's width, not depth.
        let mut last_use = vec![0usize; stop + 1];
        for (i, node) in nodes.iter().enumerate().take(stop + 1) {
            for &j in &node.inputs {
                last_use[j] = last_use[j].max(i);
            }
        }
        for &w in wanted {
            last_use[w] = usize::MAX;
        }
        let mut values: Vec<Option<Activation>> = vec![None; stop + 1];
        for (i, v) in known {
            values[i] = Some(v);
        }
        // Evaluation without a hook: a BatchNorm that alone reads a convolution (whose output
        // nobody wants) folds into it, `bn_of[conv] = Some(bn)`.
        let mut bn_of: Vec<Option<usize>> = vec![None; stop + 1];
        if matches!(mode, Mode::Eval) && hook.is_none() {
            let mut readers = vec![0usize; stop + 1];
            for node in &nodes[..=stop] {
                node.inputs.iter().for_each(|&j| readers[j] += 1);
            }
            for (j, node) in nodes.iter().enumerate().take(stop + 1).skip(start) {
                if let (Op::BatchNorm { .. }, &[i]) = (&node.op, &node.inputs[..])
                    && i >= start
                    && matches!(nodes[i].op, Op::Conv2d { .. })
                    && readers[i] == 1
                    && last_use[i] != usize::MAX
                {
                    bn_of[i] = Some(j);
                }
            }
        }
        for i in start..=stop {
            if values[i].is_some() {
                continue; // a BatchNorm folded into its convolution
            }
            let node = &nodes[i];
            let mut ins: Vec<Activation> = Vec::with_capacity(node.inputs.len());
            for (k, &j) in node.inputs.iter().enumerate() {
                // The last read of a value moves it; a node may read one value twice (x + x).
                let last_read = last_use[j] == i && !node.inputs[k + 1..].contains(&j);
                let v = if last_read { values[j].take() } else { values[j].clone() };
                ins.push(v.expect("graph validated: inputs computed earlier"));
            }
            if let (Some(j), [Activation::Map(x)]) = (bn_of[i], &ins[..])
                && crate::backend::ops::on_flex_f32(x)
            {
                values[j] = Some(self.conv_with_batchnorm(i, j, ins.pop().unwrap().into_map()));
                continue;
            }
            let out = self.apply(i, ins, &mut mode);
            values[i] = Some(match hook {
                Some(h) => h.after(i, out),
                None => out,
            });
        }
        wanted.iter().map(|&w| values[w].clone().expect("computed")).collect()
    }

    /// Convolution `i` followed by BatchNorm `j` in evaluation mode, as one convolution: its
    /// weights scaled per output channel by the running statistics' scale, the shift added to
    /// its bias. One pass over the output instead of two (MobileNetV2 follows every
    /// convolution with a BatchNorm; that pass was 5% of its inference instructions); the
    /// result equals the two steps within float rounding. The fold is redone on every call
    /// rather than cached: it costs one multiply per weight, the convolution one per weight per
    /// output position per image (so the fold is at most 1/batch of the work), and a cache would
    /// have to follow every change of the parameters.
    fn conv_with_batchnorm(&self, i: usize, j: usize, x: Tensor<4>) -> Activation {
        let (Op::Conv2d { stride, padding, dilation, groups, .. }, Op::BatchNorm { epsilon, .. }) = (&self.graph.nodes[i].op, &self.graph.nodes[j].op) else {
            unreachable!("a convolution and its BatchNorm")
        };
        let (c, bn) = (self.layers[i].conv.as_ref().expect("conv params"), self.layers[j].bn.as_ref().expect("bn params"));
        let scale = bn.gamma.val() / bn.running_var.value().add_scalar(*epsilon).sqrt();
        let shift = bn.beta.val() - bn.running_mean.value() * scale.clone();
        let weight = c.weight.val();
        let o = weight.dims()[0];
        let bias = match &c.bias {
            Some(b) => b.val() * scale.clone() + shift,
            None => shift,
        };
        let weight = weight * scale.reshape([o, 1, 1, 1]);
        let opts = ConvOptions::new(*stride, *padding, *dilation, *groups);
        Activation::Map(conv2d(x, weight, Some(bias), opts))
    }

    fn apply(&self, i: usize, mut ins: Vec<Activation>, mode: &mut Mode) -> Activation {
        let p = &self.layers[i];
        let (batch_stats, update) = match mode {
            Mode::Eval => (false, false),
            Mode::Train(_) => (true, true),
            Mode::BatchStats => (true, false),
        };
        match &self.graph.nodes[i].op {
            Op::Input => unreachable!("node 0 is the input"),
            Op::Conv2d { stride, padding, dilation, groups, .. } => {
                let c = p.conv.as_ref().expect("conv params");
                let opts = ConvOptions::new(*stride, *padding, *dilation, *groups);
                Activation::Map(conv2d(ins.pop().unwrap().into_map(), c.weight.val(), c.bias.as_ref().map(|b| b.val()), opts))
            }
            Op::BatchNorm { epsilon, momentum, .. } => {
                let bn = p.bn.as_ref().expect("bn params");
                match ins.pop().unwrap() {
                    Activation::Map(x) => Activation::Map(batchnorm(bn, x, *epsilon, *momentum, batch_stats, update)),
                    Activation::Flat(x) => Activation::Flat(batchnorm(bn, x, *epsilon, *momentum, batch_stats, update)),
                }
            }
            Op::LayerNorm { epsilon, .. } => {
                let ln = p.ln.as_ref().expect("layer norm params");
                match ins.pop().unwrap() {
                    Activation::Map(x) => Activation::Map(layer_norm(ln, x, *epsilon)),
                    Activation::Flat(x) => Activation::Flat(layer_norm(ln, x, *epsilon)),
                }
            }
            Op::Relu => elementwise(ins.pop().unwrap(), relu, relu),
            Op::LeakyRelu { alpha } => elementwise(ins.pop().unwrap(), |t| leaky_relu(t, *alpha), |t| leaky_relu(t, *alpha)),
            Op::Sigmoid => elementwise(ins.pop().unwrap(), sigmoid, sigmoid),
            Op::Tanh => elementwise(ins.pop().unwrap(), |t| t.tanh(), |t| t.tanh()),
            Op::Clip { min, max } => elementwise(ins.pop().unwrap(), |t| clip(t, *min, *max), |t| clip(t, *min, *max)),
            Op::HardSigmoid { alpha, beta } => elementwise(ins.pop().unwrap(), |t| hard_sigmoid(t, *alpha, *beta), |t| hard_sigmoid(t, *alpha, *beta)),
            Op::HardSwish => elementwise(ins.pop().unwrap(), hard_swish, hard_swish),
            Op::Silu => elementwise(ins.pop().unwrap(), silu, silu),
            Op::Gelu => elementwise(ins.pop().unwrap(), gelu, gelu),
            Op::MaxPool { kernel, stride, padding, ceil_mode } => {
                let opts = MaxPoolOptions::new(*kernel)
                    .with_stride(*stride)
                    .with_padding(*padding)
                    .with_ceil_mode(*ceil_mode);
                Activation::Map(max_pool2d(ins.pop().unwrap().into_map(), opts))
            }
            Op::AvgPool { kernel, stride, padding, ceil_mode, count_include_pad } => {
                let opts = AvgPoolOptions::new(*kernel)
                    .with_stride(*stride)
                    .with_padding(*padding)
                    .with_ceil_mode(*ceil_mode)
                    .with_count_include_pad(*count_include_pad);
                Activation::Map(avg_pool2d(ins.pop().unwrap().into_map(), opts))
            }
            Op::GlobalAvgPool => {
                let x = ins.pop().unwrap().into_map();
                Activation::Map(x.mean_dim(3).mean_dim(2))
            }
            Op::Flatten => Activation::Flat(ins.pop().unwrap().into_flat()),
            Op::Linear { .. } => {
                let l = p.linear.as_ref().expect("linear params");
                let y = ins.pop().unwrap().into_flat().matmul(l.weight.val().transpose());
                Activation::Flat(match &l.bias {
                    Some(b) => y + b.val().unsqueeze_dim(0),
                    None => y,
                })
            }
            Op::Add => {
                let mut it = ins.into_iter();
                let first = it.next().expect("validated: 2+ inputs");
                it.fold(first, |acc, v| match (acc, v) {
                    (Activation::Map(a), b) => Activation::Map(add(a, b.into_map())),
                    (Activation::Flat(a), b) => Activation::Flat(add(a, b.into_flat())),
                })
            }
            Op::Concat => match ins[0] {
                Activation::Map(_) => Activation::Map(Tensor::cat(ins.into_iter().map(Activation::into_map).collect(), 1)),
                Activation::Flat(_) => Activation::Flat(Tensor::cat(ins.into_iter().map(Activation::into_flat).collect(), 1)),
            },
            Op::ChannelShuffle { groups } => {
                let x = ins.pop().unwrap().into_map();
                let [n, c, h, w] = x.dims();
                Activation::Map(x.reshape([n, *groups, c / groups, h, w]).swap_dims(1, 2).reshape([n, c, h, w]))
            }
            Op::ChannelSlice { start, end } => match ins.pop().unwrap() {
                Activation::Map(t) => Activation::Map(t.narrow(1, *start, end - start)),
                Activation::Flat(t) => Activation::Flat(t.narrow(1, *start, end - start)),
            },
            Op::Mul => {
                let b = ins.pop().unwrap();
                let a = ins.pop().unwrap();
                match (a, b) {
                    // Broadcasting covers the [N, C, 1, 1] gate of a squeeze-and-excitation block.
                    (Activation::Map(a), b) => Activation::Map(a * b.into_map()),
                    (Activation::Flat(a), b) => Activation::Flat(a * b.into_flat()),
                }
            }
            // A mask that keeps every channel (ANP's sweep places one at every site) is the
            // identity: no pass over the values.
            Op::ChannelMask { keep } if keep.iter().all(|&k| k) => ins.pop().unwrap(),
            Op::ChannelMask { keep } => {
                let x = ins.pop().unwrap();
                let m: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
                let c = m.len();
                match x {
                    Activation::Map(t) => {
                        let mask = Tensor::<1>::from_data(TensorData::new(m, [c]), &t.device()).reshape([1, c, 1, 1]);
                        Activation::Map(t * mask)
                    }
                    Activation::Flat(t) => {
                        let mask = Tensor::<1>::from_data(TensorData::new(m, [c]), &t.device()).reshape([1, c]);
                        Activation::Flat(t * mask)
                    }
                }
            }
            Op::Dropout { p: prob } => {
                let x = ins.pop().unwrap();
                match mode {
                    Mode::Train(rng) if *prob > 0.0 => dropout(x, *prob, rng),
                    _ => x,
                }
            }
            Op::Tokens => {
                let x = ins.pop().unwrap().into_map();
                let [n, c, h, w] = x.dims();
                Activation::Map(x.reshape([n, c, h * w, 1]))
            }
            Op::ClassToken { .. } => {
                let x = ins.pop().unwrap().into_map();
                let [n, c, _, _] = x.dims();
                let token = p.embed.as_ref().expect("embedding params").weight.val().reshape([1, c, 1, 1]).expand([n, c, 1, 1]);
                Activation::Map(Tensor::cat(vec![token, x], 2))
            }
            Op::PositionEmbedding { channels, tokens } => {
                let table = p.embed.as_ref().expect("embedding params").weight.val().reshape([1, *channels, *tokens, 1]);
                Activation::Map(ins.pop().unwrap().into_map() + table)
            }
            Op::Attention { heads, scale } => Activation::Map(attention(ins.pop().unwrap().into_map(), *heads, *scale)),
            Op::TokenSelect { index } => {
                let x = ins.pop().unwrap().into_map();
                let [n, c, _, _] = x.dims();
                Activation::Flat(x.narrow(2, *index, 1).reshape([n, c]))
            }
        }
    }

    /// Every float parameter and running statistic with its node name and role, in node order
    /// (PyTorch naming: BatchNorm's gamma/beta are `weight`/`bias`).
    pub fn named_tensors(&self) -> Vec<(String, TensorData)> {
        let mut out = Vec::new();
        for (node, p) in self.graph.nodes.iter().zip(&self.layers) {
            let mut push = |role: &str, d: TensorData| out.push((format!("{}.{role}", node.name), d));
            if let Some(c) = &p.conv {
                push("weight", c.weight.val().into_data());
                if let Some(b) = &c.bias {
                    push("bias", b.val().into_data());
                }
            }
            if let Some(bn) = &p.bn {
                push("weight", bn.gamma.val().into_data());
                push("bias", bn.beta.val().into_data());
                push("running_mean", bn.running_mean.value_sync().into_data());
                push("running_var", bn.running_var.value_sync().into_data());
            }
            if let Some(ln) = &p.ln {
                push("weight", ln.gamma.val().into_data());
                push("bias", ln.beta.val().into_data());
            }
            if let Some(l) = &p.linear {
                push("weight", l.weight.val().into_data());
                if let Some(b) = &l.bias {
                    push("bias", b.val().into_data());
                }
            }
            if let Some(e) = &p.embed {
                push("weight", e.weight.val().into_data());
            }
        }
        out
    }

    /// Replaces one tensor, named by node and PyTorch role (`weight`, `bias`, `running_mean`,
    /// `running_var`), checking that its shape is the one the graph gives it. How imported
    /// weights (ONNX initializers, PyTorch state dicts) get into a model.
    pub fn set_tensor(&mut self, node: usize, role: &str, data: TensorData) -> Result<()> {
        let name = format!("{}.{role}", self.graph.nodes.get(node).map(|n| n.name.as_str()).unwrap_or("?"));
        let p = self.layers.get_mut(node).ok_or_else(|| Error::model(format!("{name}: no such node")))?;
        let given: Vec<usize> = data.shape().iter().copied().collect();
        let values = data.convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::model(format!("{name}: {e:?}")))?;
        fn set<const D: usize>(name: &str, slot: &mut Param<Tensor<D>>, given: &[usize], values: Vec<f32>) -> Result<()> {
            let t = slot.val();
            let want = t.dims();
            // A scalar-free reshape is allowed when the element counts agree and only unit
            // dimensions differ (e.g. a [1, C] bias for a [C] slot).
            let squeeze = |d: &[usize]| d.iter().copied().filter(|&x| x != 1).collect::<Vec<_>>();
            if given != want.as_slice() && squeeze(given) != squeeze(&want) {
                return Err(Error::model(format!("{name} has shape {given:?}, the graph needs {want:?}")));
            }
            *slot = Param::from_tensor(Tensor::from_data(TensorData::new(values, want), &t.device()));
            Ok(())
        }
        fn set_state(name: &str, slot: &mut RunningState<Tensor<1>>, given: &[usize], values: Vec<f32>) -> Result<()> {
            let t = slot.value_sync();
            let want = t.dims();
            if given.iter().product::<usize>() != want[0] || given.iter().filter(|&&d| d != 1).count() > 1 {
                return Err(Error::model(format!("{name} has shape {given:?}, the graph needs {want:?}")));
            }
            *slot = RunningState::new(Tensor::from_data(TensorData::new(values, want), &t.device()));
            Ok(())
        }
        let missing = || Error::model(format!("the graph has no tensor {name}"));
        if let Some(e) = &mut p.embed {
            return match role {
                "weight" => set(&name, &mut e.weight, &given, values),
                _ => Err(missing()),
            };
        }
        if let Some(ln) = &mut p.ln {
            return match role {
                "weight" => set(&name, &mut ln.gamma, &given, values),
                "bias" => set(&name, &mut ln.beta, &given, values),
                _ => Err(missing()),
            };
        }
        match (role, &mut p.conv, &mut p.bn, &mut p.linear) {
            ("weight", Some(c), _, _) => set(&name, &mut c.weight, &given, values),
            ("bias", Some(c), _, _) => set(&name, c.bias.as_mut().ok_or_else(missing)?, &given, values),
            ("weight", _, Some(bn), _) => set(&name, &mut bn.gamma, &given, values),
            ("bias", _, Some(bn), _) => set(&name, &mut bn.beta, &given, values),
            ("running_mean", _, Some(bn), _) => set_state(&name, &mut bn.running_mean, &given, values),
            ("running_var", _, Some(bn), _) => set_state(&name, &mut bn.running_var, &given, values),
            ("weight", _, _, Some(l)) => set(&name, &mut l.weight, &given, values),
            ("bias", _, _, Some(l)) => set(&name, l.bias.as_mut().ok_or_else(missing)?, &given, values),
            _ => Err(missing()),
        }
    }

    /// Checks that every weight is finite: NaN or infinite weights make every downstream
    /// number meaningless, so we refuse them with the tensor's name.
    pub fn check_finite(&self) -> Result<()> {
        for (name, data) in self.named_tensors() {
            let values = data.try_to_vec::<f32>().map_err(|e| Error::model(format!("{name}: {e:?}")))?;
            if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
                return Err(Error::model(format!("tensor {name} has a non-finite value ({}) at index {pos}", values[pos])));
            }
        }
        Ok(())
    }

    pub fn num_classes(&self) -> usize {
        self.graph.num_classes().expect("model graphs are validated when built")
    }

    pub fn shapes(&self) -> Vec<Shape> {
        self.graph.validate().expect("model graphs are validated when built")
    }
}

/// Applies the same element-wise function to a map or a flat vector.
fn elementwise(x: Activation, map: impl FnOnce(Tensor<4>) -> Tensor<4>, flat: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Activation {
    match x {
        Activation::Map(t) => Activation::Map(map(t)),
        Activation::Flat(t) => Activation::Flat(flat(t)),
    }
}

fn batchnorm<const D: usize>(bn: &BatchNormParams, x: Tensor<D>, eps: f64, momentum: f64, batch_stats: bool, update: bool) -> Tensor<D> {
    let dims = x.dims();
    if batch_stats {
        let rest: usize = dims[2..].iter().product();
        let (out, mean, variance) = crate::backend::ops::batch_norm_train(x.reshape([dims[0], dims[1], rest, 1]), bn.gamma.val(), bn.beta.val(), eps);
        let out = out.reshape(dims);
        if !update {
            return out;
        }
        // PyTorch semantics: running statistics track the unbiased batch variance.
        let n = dims.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, d)| *d).product::<usize>();
        let unbias = if n > 1 { n as f64 / (n as f64 - 1.0) } else { 1.0 };
        let mean = bn.running_mean.value_sync().mul_scalar(1.0 - momentum) + mean.detach().mul_scalar(momentum);
        let var = bn.running_var.value_sync().mul_scalar(1.0 - momentum) + variance.detach().mul_scalar(momentum * unbias);
        bn.running_mean.update(mean.detach());
        bn.running_var.update(var.detach());
        out
    } else {
        // Running statistics fold into one scale and shift per channel: two passes over the
        // map instead of four. They broadcast along every dimension but the channel one.
        let mut per_channel = [1usize; D];
        per_channel[1] = dims[1];
        let scale = bn.gamma.val() / bn.running_var.value().add_scalar(eps).sqrt();
        let shift = bn.beta.val() - bn.running_mean.value() * scale.clone();
        if D == 4 {
            // Maps: one parallel pass, in place (burn's broadcasts take two on one thread).
            let x4: Tensor<4> = x.reshape([dims[0], dims[1], dims[2], dims[3]]);
            return channel_affine(x4, scale, shift).reshape(dims);
        }
        x * scale.reshape(per_channel) + shift.reshape(per_channel)
    }
}

/// Normalises over dimension 1 (the channels) at every other index, then scales and shifts
/// per channel: `(x - mean) / sqrt(var + eps) * gamma + beta`, the biased variance as ONNX
/// and PyTorch use.
fn layer_norm<const D: usize>(ln: &LayerNormParams, x: Tensor<D>, eps: f64) -> Tensor<D> {
    let dims = x.dims();
    let mut per_channel = [1usize; D];
    per_channel[1] = dims[1];
    let (var, mean) = x.clone().var_mean_bias(1);
    let normed = (x - mean) / var.add_scalar(eps).sqrt();
    normed * ln.gamma.val().reshape(per_channel) + ln.beta.val().reshape(per_channel)
}

/// Multi-head self-attention on packed [N, 3C, T, 1] queries, keys and values (see
/// [`Op::Attention`]): [N, C, T, 1].
fn attention(qkv: Tensor<4>, heads: usize, scale: f64) -> Tensor<4> {
    let [n, c3, t, _] = qkv.dims();
    let c = c3 / 3;
    let hd = c / heads;
    // [N, 3*heads, hd, T]: parts, then heads, then features; tokens last.
    let x = qkv.reshape([n, 3 * heads, hd, t]);
    let q = x.clone().narrow(1, 0, heads).swap_dims(2, 3); // [N, h, T, hd]
    let k_t = x.clone().narrow(1, heads, heads); // [N, h, hd, T]: already k transposed
    let v = x.narrow(1, 2 * heads, heads).swap_dims(2, 3); // [N, h, T, hd]
    let weights = burn::tensor::activation::softmax(q.matmul(k_t).mul_scalar(scale), 3);
    // [N, h, T, hd] -> [N, h, hd, T] -> [N, C, T, 1]: head-major channels again.
    weights.matmul(v).swap_dims(2, 3).reshape([n, c, t, 1])
}

fn dropout(x: Activation, p: f64, rng: &mut Rng) -> Activation {
    let scale = (1.0 / (1.0 - p)) as f32;
    let mut mask = |dims: &[usize], device: &Device| {
        let n: usize = dims.iter().product();
        let m: Vec<f32> = (0..n).map(|_| if rng.uniform() < p { 0.0 } else { scale }).collect();
        Tensor::<1>::from_data(TensorData::new(m, [n]), device)
    };
    match x {
        Activation::Map(t) => {
            let dims = t.dims();
            let m = mask(&dims, &t.device()).reshape(dims);
            Activation::Map(t * m)
        }
        Activation::Flat(t) => {
            let dims = t.dims();
            let m = mask(&dims, &t.device()).reshape(dims);
            Activation::Flat(t * m)
        }
    }
}
