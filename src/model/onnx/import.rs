//! ONNX -> graph IR. The file is checked by [`super::guard`] first; `onnx-ir` then does the
//! ONNX semantics (attribute defaults per opset, shape inference, folding of constant
//! Shape/Gather chains, Gemm and MatMul+Add fused to Linear), and this module maps its typed
//! nodes onto our closed set of ops, collecting every form it cannot map so the user sees them
//! all at once.
//!
//! onnx-ir renames nodes (`conv2d3`); we name layers after their weight initializer instead
//! (`layer4.1.conv2` from `layer4.1.conv2.weight`), which for PyTorch exports are the module
//! paths the user knows, and keep the file's own node names as aliases for `--layer`.

use std::collections::{BTreeMap, HashMap, HashSet};

use burn::tensor::TensorData;
use onnx_ir::{ArgType, Argument, ModelProto, Node, OnnxGraph};

use super::OnnxIo;
use super::views::{AttentionFacts, Layout, Part, attention_step, batch_flat_step, class_token_step, expand_step, view_step};
use crate::error::{Error, Result};
use crate::model::graph::{Graph, Op, Shape};

/// The graph, the tensors to put in it (node, role, data), and its ONNX interface.
pub struct Converted {
    pub graph: Graph,
    pub tensors: Vec<(usize, &'static str, TensorData)>,
    pub io: OnnxIo,
}

/// FNV-1a over f32 bit patterns: identifies a weight tensor's contents across onnx-ir's
/// renaming (two different layers with bit-identical weights would share a name; we then
/// fall back to onnx-ir's name for the second).
fn digest(values: &[f32]) -> u64 {
    let mut h = crate::digest::Fnv1a::default();
    h.eat_f32s(values);
    h.finish()
}

/// Float initializers of the (checked) file by content digest: (initializer name, the name of
/// the node that reads it).
fn initializer_names(proto: &ModelProto) -> HashMap<u64, (String, String)> {
    let mut out = HashMap::new();
    let Some(g) = proto.graph.as_ref() else { return out };
    let mut reader: HashMap<&str, &str> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            reader.entry(i.as_str()).or_insert(n.name.as_str());
        }
    }
    for t in g.initializer.iter().filter(|t| t.data_type == 1) {
        let values: Vec<f32> = if t.raw_data.is_empty() {
            t.float_data.clone()
        } else {
            t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        out.entry(digest(&values)).or_insert((t.name.clone(), reader.get(t.name.as_str()).unwrap_or(&"").to_string()));
    }
    out
}

/// The PyTorch module a node of a TorchScript export belongs to: `/features/features.0/Conv`
/// is `features.0`, `/layer1/layer1.0/conv1/Conv` is `layer1.0.conv1` (each scope is named by
/// its attribute, the first by its full path).
fn module_path(node: &str) -> Option<String> {
    let mut scopes: Vec<&str> = node.split('/').filter(|s| !s.is_empty()).collect();
    scopes.pop()?; // the operator
    let last = *scopes.last()?;
    Some(match scopes.len() {
        n if n >= 2 && !last.contains('.') => format!("{}.{last}", scopes[n - 2]),
        _ => last.to_string(),
    })
}

/// Makes a name valid for the graph IR (letters, digits, `_ . - / :`, at most 128 bytes).
fn clean_name(name: &str) -> String {
    let s: String = name.trim_start_matches('/').chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/' | ':') { c } else { '_' }).collect();
    let s: String = s.chars().take(120).collect();
    if s.is_empty() { "node".into() } else { s }
}

pub(super) struct Builder<'a> {
    /// The checked file's graph, for what onnx-ir leaves unevaluated (a strided gather's indices).
    pub(super) proto: &'a onnx_ir::GraphProto,
    /// Its default operator set's version.
    pub(super) opset: i64,
    /// The file's name for the image input, and the batch size it fixes (if any): what a
    /// strided gather's indices are evaluated from.
    pub(super) input_name: &'a str,
    pub(super) fixed_batch: Option<i64>,
    pub(super) graph: Graph,
    pub(super) shapes: Vec<Shape>,
    pub(super) tensors: Vec<(usize, &'static str, TensorData)>,
    names: HashSet<String>,
    /// onnx-ir value name -> our node index.
    pub(super) values: HashMap<String, usize>,
    /// Our node name -> the file's node name, for aliases.
    aliases: BTreeMap<String, String>,
    weight_names: HashMap<u64, (String, String)>,
    used_weight_names: HashSet<u64>,
    unsupported: Vec<String>,
    /// Rank-5 views of a feature map on the way to a channel shuffle: value -> (node, groups,
    /// whether the two channel axes are already swapped). They become one node or an error.
    views: HashMap<String, (usize, usize, bool)>,
    /// Values laid out otherwise than our channels-first nodes: value -> (node, layout).
    pub(super) layouts: HashMap<String, (usize, Layout)>,
    /// Values inside a multi-head attention block: value -> (packed in-projection, part).
    pub(super) attention: HashMap<String, (usize, Part)>,
    /// What each attention block (by its packed in-projection) has shown so far.
    pub(super) attention_facts: HashMap<usize, AttentionFacts>,
    /// Constants broadcast with `Expand` (a class token), by value.
    pub(super) expanded: HashMap<String, TensorData>,
}

pub(super) fn f32s(data: &TensorData) -> Result<Vec<f32>> {
    data.clone().convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::model(format!("reading a constant: {e:?}")))
}

fn dims(data: &TensorData) -> Vec<usize> {
    data.shape().iter().copied().collect()
}

impl Builder<'_> {
    fn input(&self, arg: &Argument) -> Option<usize> {
        self.values.get(&arg.name).copied()
    }

    pub(super) fn unique(&mut self, base: &str) -> String {
        let base = clean_name(base);
        let mut name = base.clone();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Names a layer after its weight initializer when the weight can be traced back to one.
    fn layer_name(&mut self, onnx_name: &str, weight: &[f32]) -> String {
        let d = digest(weight);
        if !self.used_weight_names.contains(&d)
            && let Some((init, node)) = self.weight_names.get(&d).cloned()
        {
            self.used_weight_names.insert(d);
            // PyTorch names a weight it computed on export (BatchNorm folded into a
            // convolution) `onnx::Conv_39`: the node's module path names the layer better.
            let base = match init.strip_prefix("onnx::").and_then(|_| module_path(&node)) {
                Some(path) => path,
                None => init.strip_suffix(".weight").unwrap_or(&init).to_string(),
            };
            let name = self.unique(&base);
            if !node.is_empty() {
                self.aliases.insert(node, name.clone());
            }
            return name;
        }
        self.unique(onnx_name)
    }

    /// A linear layer's name: its weight's initializer's, or, when the exporter computed the
    /// (transposed) weight under a name of its own (`val_14`), its bias's (`mlp.0.bias` names
    /// `mlp.0`, `in_proj_bias` `in_proj`).
    fn layer_name_or_bias(&mut self, onnx_name: &str, weight: &[f32], bias: Option<&[f32]>) -> String {
        let anonymous = |init: &str| !init.contains('.');
        let weight_init = self.weight_names.get(&digest(weight)).map(|(init, _)| init.clone());
        if weight_init.as_deref().is_none_or(anonymous)
            && let Some(bias) = bias
            && let Some((init, node)) = self.weight_names.get(&digest(bias)).cloned()
            && !anonymous(&init)
            && self.used_weight_names.insert(digest(bias))
        {
            let base = init.strip_suffix(".bias").or_else(|| init.strip_suffix("_bias")).unwrap_or(&init).to_string();
            let name = self.unique(&base);
            if !node.is_empty() {
                self.aliases.insert(node, name.clone());
            }
            return name;
        }
        self.layer_name(onnx_name, weight)
    }

    /// Adds a node no ONNX value names (a flatten the exporter folded away, a channels-last
    /// view's channels-first node); returns its index.
    pub(super) fn push(&mut self, name: String, op: Op, inputs: Vec<usize>) -> Result<usize> {
        let in_shapes: Vec<Shape> = inputs.iter().map(|&i| self.shapes[i]).collect();
        let shape = op.output_shape(&in_shapes).map_err(|e| Error::model(format!("node {name}: {}", crate::model::graph::strip(&e))))?;
        self.graph.nodes.push(crate::model::Node { name, op, inputs });
        self.shapes.push(shape);
        Ok(self.graph.nodes.len() - 1)
    }

    /// Adds a node whose output is the ONNX value `out`.
    pub(super) fn add(&mut self, name: String, op: Op, inputs: Vec<usize>, out: &Argument) -> Result<usize> {
        let i = self.push(name, op, inputs)?;
        self.values.insert(out.name.clone(), i);
        Ok(i)
    }

    pub(super) fn add_named(&mut self, base: &str, op: Op, inputs: Vec<usize>, out: &Argument) -> Result<usize> {
        let name = self.unique(base);
        self.add(name, op, inputs, out)
    }

    fn unsupported(&mut self, node: &Node, why: impl std::fmt::Display) {
        self.unsupported.push(format!("{} ({}): {why}", node.name(), node.node_type()));
    }
}

/// Symmetric padding from onnx-ir's (top, left, bottom, right), or why not.
fn symmetric(p: &onnx_ir::node::padding::PaddingConfig2d) -> std::result::Result<[usize; 2], String> {
    let (t, l, b, r) = p.as_tuple();
    if t != b || l != r { Err(format!("asymmetric padding {:?}", (t, l, b, r))) } else { Ok([t, l]) }
}

/// Padding for `auto_pad` SAME_* when it comes out symmetric (odd totals do not).
fn same_padding(auto: &onnx_ir::node::padding::AutoPad, input: [usize; 2], k: [usize; 2], s: [usize; 2], d: [usize; 2]) -> std::result::Result<Option<[usize; 2]>, String> {
    use onnx_ir::node::padding::AutoPad;
    match auto {
        AutoPad::NotSet => Ok(None),
        AutoPad::Valid => Ok(Some([0, 0])),
        AutoPad::SameUpper | AutoPad::SameLower => {
            if [s, k, d].iter().any(|v| v.contains(&0)) {
                return Err(format!("auto_pad {auto} with a zero stride, kernel or dilation"));
            }
            let mut out = [0; 2];
            for a in 0..2 {
                let o = input[a].div_ceil(s[a]);
                // Sizes are bounded by the guard; checked anyway, as everything from the file.
                let span = o.saturating_sub(1).checked_mul(s[a]).zip((k[a] - 1).checked_mul(d[a])).and_then(|(x, y)| x.checked_add(y)?.checked_add(1));
                let total = span.ok_or_else(|| format!("auto_pad {auto}: kernel {k:?} too large"))?.saturating_sub(input[a]);
                if total % 2 == 1 {
                    return Err(format!("auto_pad {auto} needs asymmetric padding here"));
                }
                out[a] = total / 2;
            }
            Ok(Some(out))
        }
    }
}

/// A pool's symmetric padding (explicit or `auto_pad`); dilated pools are not supported.
fn pool_padding(auto: &onnx_ir::node::padding::AutoPad, pads: &onnx_ir::node::padding::PaddingConfig2d, dilation: [usize; 2], input: [usize; 2], k: [usize; 2], s: [usize; 2]) -> std::result::Result<[usize; 2], String> {
    if dilation != [1, 1] {
        return Err(format!("dilation {dilation:?}"));
    }
    match same_padding(auto, input, k, s, [1, 1])? {
        Some(p) => Ok(p),
        None => symmetric(pads),
    }
}

fn hw(shape: Shape) -> [usize; 2] {
    match shape {
        Shape::Map([_, h, w]) => [h, w],
        Shape::Flat(_) => [1, 1],
    }
}

/// Is this value a float tensor (as opposed to a shape, an index, a scalar)?
fn is_float_tensor(arg: &Argument) -> bool {
    matches!(&arg.ty, ArgType::Tensor(t) if matches!(t.dtype, burn::tensor::DType::F32 | burn::tensor::DType::F64 | burn::tensor::DType::F16 | burn::tensor::DType::BF16))
}

/// Converts a parsed graph. `proto` is the checked file (for layer names and the interface).
pub fn convert(g: &OnnxGraph, proto: &ModelProto) -> Result<Converted> {
    let pg = proto.graph.as_ref().ok_or_else(|| Error::model("no graph"))?;
    let initializers: HashSet<&str> = pg.initializer.iter().map(|t| t.name.as_str()).collect();
    let real_inputs: Vec<&onnx_ir::ValueInfoProto> = pg.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
    if g.inputs.len() != 1 || real_inputs.len() != 1 {
        return Err(Error::model(format!("the model has {} inputs; fineprune handles image classifiers with one input", real_inputs.len())));
    }
    if g.outputs.len() != 1 || pg.output.len() != 1 {
        return Err(Error::model(format!("the model has {} outputs; fineprune handles classifiers with one output", pg.output.len())));
    }
    let input = &g.inputs[0];
    let in_dims = input.ty.static_shape().cloned().unwrap_or_default();
    if input.ty.rank() != 4 || in_dims.len() != 4 || in_dims[1..].iter().any(|d| d.is_none()) {
        return Err(Error::model(format!("input {:?} has type {}; expected a 4-d image batch with known channels, height and width", real_inputs[0].name, input.ty)));
    }
    let d: Vec<usize> = in_dims[1..].iter().map(|d| d.expect("checked")).collect();
    // A tf2onnx model takes NHWC and transposes at once; we run NCHW and drop the transpose.
    let nhwc_transpose = g.nodes.iter().find_map(|n| match n {
        Node::Transpose(t) if t.inputs[0].name == input.name && t.config.perm == [0, 3, 1, 2] => Some(t.outputs[0].name.clone()),
        _ => None,
    });
    let input_shape = if nhwc_transpose.is_some() { [d[2], d[0], d[1]] } else { [d[0], d[1], d[2]] };
    let graph = Graph { input_shape, nodes: vec![crate::model::Node { name: "input".into(), op: Op::Input, inputs: vec![] }], output: 0, prune_site: None };
    let mut b = Builder {
        proto: pg,
        opset: super::guard::default_opset(proto),
        input_name: &real_inputs[0].name,
        fixed_batch: real_inputs[0].type_.as_ref().and_then(|t| t.tensor_type().shape.as_ref()).and_then(|s| s.dim.first()).map(|d| d.dim_value()).filter(|&d| d > 0),
        graph,
        shapes: vec![Shape::Map(input_shape)],
        tensors: vec![],
        names: HashSet::from(["input".to_string()]),
        values: HashMap::from([(input.name.clone(), 0)]),
        aliases: BTreeMap::new(),
        weight_names: initializer_names(proto),
        used_weight_names: HashSet::new(),
        unsupported: vec![],
        views: HashMap::new(),
        layouts: HashMap::new(),
        attention: HashMap::new(),
        attention_facts: HashMap::new(),
        expanded: HashMap::new(),
    };
    if let Some(t) = &nhwc_transpose {
        b.values.insert(t.clone(), 0);
    }
    let output_name = &g.outputs[0].name;
    let mut softmax_output = false;
    // How many nodes read each value: a bias may only be folded into a layer nobody else reads.
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for n in &g.nodes {
        for i in n.inputs() {
            *readers.entry(i.name.as_str()).or_default() += 1;
        }
    }

    let mut failed: HashSet<String> = HashSet::new();
    for node in &g.nodes {
        let out = &node.outputs()[0];
        if b.values.contains_key(&out.name) {
            continue; // the NHWC transpose
        }
        // Shape arithmetic left over from exporters (Shape/Gather/Unsqueeze/Concat/Cast on
        // integer values) feeds only Reshape's shape input; skip it, and refuse any float value
        // that depends on it (it will be missing below).
        if !node.outputs().iter().any(is_float_tensor) || matches!(node, Node::Constant(_)) {
            continue;
        }
        // The first input must be a value we computed.
        if node.inputs().iter().any(|a| failed.contains(&a.name)) {
            // Downstream of a node already reported: one message per cause.
            failed.extend(node.outputs().iter().map(|o| o.name.clone()));
            continue;
        }
        let step = shuffle_step(&mut b, node)
            .or_else(|| batch_flat_step(&mut b, node))
            .or_else(|| expand_step(&mut b, node))
            .or_else(|| class_token_step(&mut b, node))
            .or_else(|| attention_step(&mut b, node))
            .or_else(|| view_step(&mut b, node));
        if let Some(step) = step {
            if let Err(why) = step {
                failed.extend(node.outputs().iter().map(|o| o.name.clone()));
                b.unsupported(node, why);
            }
            continue;
        }
        // Add and Mul commute: `constant * x` (PyTorch's layer scale) reads as `x * constant`.
        let commutes = matches!(node, Node::Add(_) | Node::Mul(_)) && node.inputs().len() == 2;
        let first = if commutes && b.input(&node.inputs()[0]).is_none() && b.input(&node.inputs()[1]).is_some() { 1 } else { 0 };
        let x = node.inputs().get(first).and_then(|a| b.input(a));
        let Some(x) = x else {
            failed.extend(node.outputs().iter().map(|o| o.name.clone()));
            let name = node.inputs().first().map(|a| a.name.clone()).unwrap_or_default();
            b.unsupported(node, format!("reads {name:?}, which is not computed from the model input (a constant or shape expression that did not fold)"));
            continue;
        };
        let xs = b.shapes[x];
        let result: std::result::Result<(), String> = (|| -> std::result::Result<(), String> {
            if let Some(op) = elementwise_op(node) {
                b.add_named(node.name(), op?, vec![x], out).map_err(|e| e.to_string())?;
                return Ok(());
            }
            match node {
                Node::Conv2d(n) => {
                    let c = &n.config;
                    let w = n.inputs.get(1).and_then(|a| a.value()).ok_or("the weight is not a constant")?;
                    let bias = n.inputs.get(2).filter(|a| !a.is_optional()).map(|a| a.value().ok_or("the bias is not a constant")).transpose()?;
                    let padding = match same_padding(&c.auto_pad, hw(xs), c.kernel_size, c.stride, c.dilation)? {
                        Some(p) => p,
                        None => symmetric(&c.padding)?,
                    };
                    let wv = f32s(&w).map_err(|e| e.to_string())?;
                    let wd = dims(&w);
                    if wd.len() != 4 {
                        return Err(format!("weight has shape {wd:?}"));
                    }
                    let op = Op::Conv2d { in_channels: xs.channels(), out_channels: wd[0], kernel: c.kernel_size, stride: c.stride, padding, dilation: c.dilation, groups: c.groups, bias: bias.is_some() };
                    let name = b.layer_name(&n.name, &wv);
                    let i = b.add(name, op, vec![x], out).map_err(|e| e.to_string())?;
                    b.tensors.push((i, "weight", w));
                    if let Some(bias) = bias {
                        b.tensors.push((i, "bias", bias));
                    }
                }
                Node::BatchNormalization(n) => {
                    let onnx_ir::node::batch_norm::BatchNormConfig::Static(c) = &n.config else { return Err("statistics are not constants".into()) };
                    let get = |k: usize| n.inputs.get(k).and_then(|a| a.value()).ok_or("statistics are not constants");
                    let (gamma, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
                    let name = b.layer_name(&n.name, &f32s(&gamma).map_err(|e| e.to_string())?);
                    // ONNX momentum weights the running value; ours (PyTorch's) the new batch.
                    let momentum = if (0.0..=1.0).contains(&c.momentum) { 1.0 - c.momentum } else { 0.1 };
                    let i = b.add(name, Op::BatchNorm { channels: xs.channels(), epsilon: c.epsilon, momentum }, vec![x], out).map_err(|e| e.to_string())?;
                    b.tensors.extend([(i, "weight", gamma), (i, "bias", beta), (i, "running_mean", mean), (i, "running_var", var)]);
                }
                Node::MaxPool2d(n) => {
                    let c = &n.config;
                    let padding = pool_padding(&c.auto_pad, &c.padding, c.dilation, hw(xs), c.kernel_size, c.strides)?;
                    let op = Op::MaxPool { kernel: c.kernel_size, stride: c.strides, padding, ceil_mode: c.ceil_mode };
                    b.add_named(&n.name, op, vec![x], out).map_err(|e| e.to_string())?;
                }
                Node::AveragePool2d(n) => {
                    let c = &n.config;
                    let padding = pool_padding(&c.auto_pad, &c.padding, c.dilation, hw(xs), c.kernel_size, c.strides)?;
                    let op = Op::AvgPool { kernel: c.kernel_size, stride: c.strides, padding, ceil_mode: c.ceil_mode, count_include_pad: c.count_include_pad };
                    b.add_named(&n.name, op, vec![x], out).map_err(|e| e.to_string())?;
                }
                Node::GlobalAveragePool(n) => drop(b.add_named(&n.name, Op::GlobalAvgPool, vec![x], out).map_err(|e| e.to_string())?),
                Node::ReduceMean(n) => {
                    // PyTorch's dynamo exporter writes adaptive average pooling to 1x1 as a mean
                    // over height and width.
                    let onnx_ir::node::reduce::ReduceAxes::Static(axes) = &n.config.axes else { return Err("the axes are not constants".into()) };
                    let mut axes = axes.clone();
                    axes.sort_unstable();
                    if axes != [2, 3] || !matches!(xs, Shape::Map(_)) {
                        return Err(format!("a mean over axes {axes:?} (only over height and width, [2, 3], of a feature map)"));
                    }
                    if n.config.keepdims {
                        b.add_named(&n.name, Op::GlobalAvgPool, vec![x], out).map_err(|e| e.to_string())?;
                    } else {
                        let pool = b.unique(&n.name);
                        let p = b.push(pool, Op::GlobalAvgPool, vec![x]).map_err(|e| e.to_string())?;
                        b.add_named(&format!("{}.flatten", n.name), Op::Flatten, vec![p], out).map_err(|e| e.to_string())?;
                    }
                }
                Node::Flatten(n) => {
                    if n.config.axis != 1 {
                        return Err(format!("axis {} (only 1, keeping the batch, is supported)", n.config.axis));
                    }
                    b.add_named(&n.name, Op::Flatten, vec![x], out).map_err(|e| e.to_string())?;
                }
                Node::Reshape(_) | Node::Squeeze(_) | Node::Unsqueeze(_) => reshape_like(&mut b, node, x, xs, out)?,
                Node::Linear(_) | Node::MatMul(_) => {
                    let (name, weight, out_f, bias) = linear_parts(&mut b, node)?;
                    linear(&mut b, name, x, xs, out_f, weight, bias, out)?;
                }
                Node::Gemm(n) => {
                    let c = &n.config;
                    if c.trans_a != 0 {
                        return Err("transA=1 (the batch would be transposed)".into());
                    }
                    let (wv, [rows, cols]) = matrix(n.inputs.get(1), "B")?;
                    let name = b.layer_name(&n.name, &wv);
                    let (mut weight, out_f) = if c.trans_b != 0 { (wv, rows) } else { (transpose(&wv, rows, cols), cols) };
                    weight.iter_mut().for_each(|v| *v *= c.alpha);
                    let bias = match n.inputs.get(2).filter(|a| !a.is_optional()) {
                        Some(a) => {
                            let cv = f32s(&a.value().ok_or("C is not a constant")?).map_err(|e| e.to_string())?;
                            let full: Vec<f32> = match cv.len() {
                                1 => vec![cv[0]; out_f],
                                n if n == out_f => cv,
                                n => return Err(format!("C has {n} values for {out_f} outputs")),
                            };
                            Some(full.into_iter().map(|v| v * c.beta).collect())
                        }
                        None => None,
                    };
                    linear(&mut b, name, x, xs, out_f, weight, bias, out)?;
                }
                Node::Add(n) => {
                    let other = &n.inputs[1 - first];
                    match (b.input(other), other.value()) {
                        (Some(y), _) => drop(b.add_named(&n.name, Op::Add, vec![x, y], out).map_err(|e| e.to_string())?),
                        (None, Some(c)) => {
                            let v = f32s(&c).map_err(|e| e.to_string())?;
                            match xs {
                                // [1, C, T, 1]: a position embedding in our own (channels-first) export.
                                Shape::Map([ch, t, 1]) if t > 1 && matches!(dims(&c)[..], [1, a, b, 1] | [a, b, 1] if a == ch && b == t) => {
                                    let i = b.add_named(&n.name, Op::PositionEmbedding { channels: ch, tokens: t }, vec![x], out).map_err(|e| e.to_string())?;
                                    b.tensors.push((i, "weight", TensorData::new(v, [ch, t])));
                                }
                                _ => fold_bias(&mut b, x, &n.inputs[first].name, &readers, v, out)?,
                            }
                        }
                        (None, None) => return Err(format!("reads {:?}, which is not computed from the model input", other.name)),
                    }
                }
                Node::Mul(n) => {
                    let other = &n.inputs[1 - first];
                    match (b.input(other), other.value()) {
                        (Some(y), _) => mul_values(&mut b, &n.name, x, y, &readers, [&n.inputs[first].name, &other.name], out)?,
                        (None, Some(c)) => drop(channel_scale(&mut b, &n.name, x, f32s(&c).map_err(|e| e.to_string())?, out)?),
                        (None, None) => return Err(format!("reads {:?}, which is not computed from the model input", other.name)),
                    }
                }
                Node::LayerNormalization(n) => {
                    if !matches!(xs, Shape::Flat(_)) || !(n.config.axis == -1 || n.config.axis == 1) {
                        return Err(format!("axis {} of {xs:?} (a feature map normalises over its channels only channels-last, as ConvNeXt does)", n.config.axis));
                    }
                    layer_norm(&mut b, n, x, out)?;
                }
                Node::Concat(n) => {
                    if n.config.axis != 1 {
                        return Err(format!("axis {} (only the channel axis 1 is supported)", n.config.axis));
                    }
                    let ins: Option<Vec<usize>> = n.inputs.iter().map(|a| b.input(a)).collect();
                    let ins = ins.ok_or("an input is not computed from the model input")?;
                    b.add_named(&n.name, Op::Concat, ins, out).map_err(|e| e.to_string())?;
                }
                Node::Split(n) => {
                    if n.config.axis != 1 {
                        return Err(format!("axis {} (only the channel axis 1 is supported)", n.config.axis));
                    }
                    let c = xs.channels();
                    let k = n.outputs.len();
                    let sizes: Vec<usize> = match &n.config.split_sizes {
                        Some(onnx_ir::node::split::SplitSizesInput::Static(v)) => v.clone(),
                        Some(_) => return Err("the split sizes are not constants".into()),
                        // ONNX: equal parts, the last one smaller when they do not divide.
                        None => {
                            let part = n.config.split_size.unwrap_or_else(|| c.div_ceil(k.max(1)));
                            (0..k).map(|i| part.min(c.saturating_sub(i * part))).collect()
                        }
                    };
                    if sizes.len() != k || sizes.iter().sum::<usize>() != c || sizes.contains(&0) {
                        return Err(format!("splits {c} channels into {sizes:?} for {k} outputs"));
                    }
                    let mut start = 0;
                    for (o, size) in n.outputs.iter().zip(sizes) {
                        b.add_named(&format!("{}.{start}", n.name), Op::ChannelSlice { start, end: start + size }, vec![x], o).map_err(|e| e.to_string())?;
                        start += size;
                    }
                }
                Node::Slice(n) => {
                    use onnx_ir::node::slice::SliceInput;
                    let stat = |v: &SliceInput| match v {
                        SliceInput::Static(v) => Ok(v.clone()),
                        SliceInput::Runtime(_) => Err("its bounds are not constants (a shape expression that did not fold)".to_string()),
                    };
                    let (starts, ends) = (stat(&n.config.starts)?, stat(&n.config.ends)?);
                    let axes = n.config.axes.as_ref().map(stat).transpose()?.unwrap_or_else(|| (0..starts.len() as i64).collect());
                    let steps = n.config.steps.as_ref().map(stat).transpose()?.unwrap_or_else(|| vec![1; starts.len()]);
                    let rank = if matches!(xs, Shape::Map(_)) { 4 } else { 2 };
                    if starts.len() != 1 || ends.len() != 1 || axes.len() != 1 || steps != [1] || (axes[0] != 1 && axes[0] != 1 - rank) {
                        return Err(format!("slices axes {axes:?} with steps {steps:?} (only a contiguous range of channels is supported)"));
                    }
                    let c = xs.channels() as i64;
                    let at = |v: i64| (if v < 0 { v.saturating_add(c) } else { v }).clamp(0, c) as usize;
                    let (start, end) = (at(starts[0]), at(ends[0]));
                    b.add_named(&n.name, Op::ChannelSlice { start, end }, vec![x], out).map_err(|e| e.to_string())?;
                }
                Node::Dropout(n) => {
                    let onnx_ir::node::dropout::DropoutInput::Static(p) = n.config.prob else { return Err("the ratio is not a constant".into()) };
                    b.add_named(&n.name, Op::Dropout { p }, vec![x], out).map_err(|e| e.to_string())?;
                }
                Node::Identity(_) => {
                    b.values.insert(out.name.clone(), x);
                }
                Node::Softmax(_) if &out.name == output_name => {
                    // Training and attack success need logits; export puts the softmax back.
                    softmax_output = true;
                    b.values.insert(out.name.clone(), x);
                }
                Node::Softmax(_) => return Err("softmax is supported only as the model's output".into()),
                _ => return Err("this form is not supported".into()),
            }
            Ok(())
        })();
        if let Err(why) = result {
            failed.extend(node.outputs().iter().map(|o| o.name.clone()));
            b.unsupported(node, why);
        }
    }
    if !b.unsupported.is_empty() {
        return Err(Error::model(format!("cannot import: {}", b.unsupported.join("; "))));
    }
    let out = *b.values.get(output_name).ok_or_else(|| Error::model(format!("the output {output_name:?} is not computed from the input")))?;
    if !matches!(b.shapes[out], Shape::Flat(_)) {
        // A classifier's output map [N, K, 1, 1] becomes logits [N, K].
        let i = b.add_named("output_flatten", Op::Flatten, vec![out], &Argument::from_name(String::new()))?;
        b.graph.output = i;
    } else {
        b.graph.output = out;
    }
    let mut graph = b.graph;
    // Drop nodes that do not reach the output (onnx-ir keeps what the file had).
    graph = prune_dead(graph, &mut b.tensors);
    graph.validate()?;
    let io = OnnxIo {
        input_name: real_inputs[0].name.clone(),
        output_name: pg.output[0].name.clone(),
        nhwc: nhwc_transpose.is_some(),
        softmax_output,
        node_names: b.aliases,
    };
    Ok(Converted { graph, tensors: b.tensors, io })
}

/// `x * constant` on a feature map: a 0/1 per-channel constant is a channel mask (a
/// `--keep-shape` export); any other per-channel or scalar constant (ConvNeXt's layer scale) a
/// depthwise 1x1 convolution, which every pass already knows.
pub(super) fn channel_scale(b: &mut Builder, name: &str, x: usize, v: Vec<f32>, out: &Argument) -> std::result::Result<usize, String> {
    let xs = b.shapes[x];
    let c = xs.channels();
    if v.len() == c && v.iter().all(|&m| m == 0.0 || m == 1.0) {
        let keep = v.iter().map(|&m| m == 1.0).collect();
        return b.add_named(name, Op::ChannelMask { keep }, vec![x], out).map_err(|e| e.to_string());
    }
    if !matches!(xs, Shape::Map(_)) || (v.len() != c && v.len() != 1) {
        return Err(format!("multiplies {xs:?} by a constant of {} values (only per-channel constants of a feature map)", v.len()));
    }
    let weight = if v.len() == 1 { vec![v[0]; c] } else { v };
    let lname = b.layer_name(name, &weight);
    let op = Op::Conv2d { in_channels: c, out_channels: c, kernel: [1, 1], stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: c, bias: false };
    let i = b.add(lname, op, vec![x], out).map_err(|e| e.to_string())?;
    b.tensors.push((i, "weight", TensorData::new(weight, [c, 1, 1, 1])));
    Ok(i)
}

/// A layer normalisation over the channels of node `x` (a flat vector's features, or a
/// channels-last map's last axis).
pub(super) fn layer_norm(b: &mut Builder, n: &onnx_ir::node::layer_norm::LayerNormalizationNode, x: usize, out: &Argument) -> std::result::Result<usize, String> {
    let c = b.shapes[x].channels();
    let gamma = f32s(&n.inputs.get(1).and_then(|a| a.value()).ok_or("the scale is not a constant")?).map_err(|e| e.to_string())?;
    let beta = match n.inputs.get(2).filter(|a| !a.is_optional()) {
        Some(a) => f32s(&a.value().ok_or("the bias is not a constant")?).map_err(|e| e.to_string())?,
        None => vec![0.0; c],
    };
    if gamma.len() != c || beta.len() != c {
        return Err(format!("scale and bias of {} and {} values for {c} channels", gamma.len(), beta.len()));
    }
    let name = b.layer_name(&n.name, &gamma);
    let i = b.add(name, Op::LayerNorm { channels: c, epsilon: n.config.epsilon }, vec![x], out).map_err(|e| e.to_string())?;
    b.tensors.extend([(i, "weight", TensorData::new(gamma, [c])), (i, "bias", TensorData::new(beta, [c]))]);
    Ok(i)
}

/// The element-wise activation an ONNX node is, if it is one (the same op on a channels-first
/// map, a flat vector or a channels-last view); an error for a form we do not support.
pub(super) fn elementwise_op(node: &Node) -> Option<std::result::Result<Op, String>> {
    use onnx_ir::node::clip::ClipInput;
    // An absent Clip bound is f32's largest value: it bounds nothing an f32 holds.
    let bound = |v: &Option<ClipInput>, default: f64| match v {
        None => Ok(default),
        Some(ClipInput::Static(v)) => Ok(v.clamp(-(f32::MAX as f64), f32::MAX as f64)),
        Some(ClipInput::Runtime(_)) => Err("a bound is not a constant".to_string()),
    };
    Some(match node {
        Node::Relu(_) => Ok(Op::Relu),
        Node::Sigmoid(_) => Ok(Op::Sigmoid),
        Node::Tanh(_) => Ok(Op::Tanh),
        Node::LeakyRelu(n) => Ok(Op::LeakyRelu { alpha: n.config.alpha }),
        Node::HardSigmoid(n) => Ok(Op::HardSigmoid { alpha: n.config.alpha, beta: n.config.beta }),
        Node::HardSwish(_) => Ok(Op::HardSwish),
        Node::Gelu(n) if matches!(n.config.approximate, onnx_ir::node::gelu::GeluApproximate::Exact) => Ok(Op::Gelu),
        Node::Gelu(_) => Err("the tanh approximation (only the exact, erf form is supported)".into()),
        Node::Clip(n) => bound(&n.config.min, -(f32::MAX as f64)).and_then(|min| Ok(Op::Clip { min, max: bound(&n.config.max, f32::MAX as f64)? })),
        _ => return None,
    })
}

/// A linear layer from onnx-ir's fused Linear (Gemm or MatMul + Add) or a bare MatMul: its
/// name (after the weight's initializer), weight in [out, in] order, output count and bias.
/// Gemm-sourced weights are [out, in] already, MatMul-sourced [in, out].
pub(super) fn linear_parts(b: &mut Builder, node: &Node) -> std::result::Result<(String, Vec<f32>, usize, Option<Vec<f32>>), String> {
    let (weight, transposed, bias) = match node {
        Node::Linear(n) => (n.inputs.get(1), n.config.transpose_weight, n.inputs.get(2).filter(|a| !a.is_optional())),
        Node::MatMul(n) => (n.inputs.get(1), false, None),
        _ => return Err("not a linear layer".into()),
    };
    let (wv, [rows, cols]) = matrix(weight, "the weight")?;
    let bias = bias.map(|a| a.value().ok_or("the bias is not a constant")).transpose()?.map(|d| f32s(&d)).transpose().map_err(|e| e.to_string())?;
    let name = b.layer_name_or_bias(node.name(), &wv, bias.as_deref());
    let (weight, out_f) = if transposed { (wv, rows) } else { (transpose(&wv, rows, cols), cols) };
    if let Some(n) = bias.as_ref().map(Vec::len).filter(|&n| n != out_f) {
        return Err(format!("bias has {n} values for {out_f} outputs"));
    }
    Ok((name, weight, out_f, bias))
}

/// One step of ShuffleNet's channel shuffle as exporters write it: Reshape a map [N, C, H, W]
/// to [N, g, C/g, H, W], Transpose(0, 2, 1, 3, 4), Reshape back to [N, C, H, W]. `None` when the
/// node is not part of one; an error when a rank-5 view is used any other way.
fn shuffle_step(b: &mut Builder, node: &Node) -> Option<std::result::Result<(), String>> {
    let input = &node.inputs().first()?.name;
    let out = &node.outputs()[0];
    let per_sample = || -> Option<Vec<usize>> { out.ty.static_shape()?.get(1..)?.iter().copied().collect() };
    if let Some(&(src, groups, swapped)) = b.views.get(input) {
        let shape = b.shapes[src];
        return Some(match node {
            Node::Transpose(t) if !swapped && t.config.perm == [0, 2, 1, 3, 4] => {
                b.views.insert(out.name.clone(), (src, groups, true));
                Ok(())
            }
            Node::Reshape(r) if swapped && per_sample().is_some_and(|p| p.len() == 3 && Shape::Map([p[0], p[1], p[2]]) == shape) => {
                b.add_named(&r.name, Op::ChannelShuffle { groups }, vec![src], out).map(drop).map_err(|e| e.to_string())
            }
            _ => Err("uses a rank-5 view of a feature map other than as a channel shuffle".into()),
        });
    }
    let Node::Reshape(_) = node else { return None };
    let &src = b.values.get(input)?;
    let Shape::Map([c, h, w]) = b.shapes[src] else { return None };
    let p = per_sample()?;
    if p.len() != 4 || p[0] == 0 || p[0] * p[1] != c || p[2..] != [h, w] {
        return None;
    }
    b.views.insert(out.name.clone(), (src, p[0], false));
    Some(Ok(()))
}

/// `Mul` of two computed values. `x * sigmoid(x)` is SiLU and `x * hardsigmoid(x)` (PyTorch's
/// constants) HardSwish when nothing else reads the gate: one activation instead of two nodes,
/// so the prune site and the sweep see an activation. Anything else is an element-wise product
/// (a squeeze-and-excitation gate broadcast over its map).
#[allow(clippy::too_many_arguments)]
fn mul_values(b: &mut Builder, name: &str, x: usize, y: usize, readers: &HashMap<&str, usize>, onnx_names: [&String; 2], out: &Argument) -> std::result::Result<(), String> {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
    for (value, gate, gate_name) in [(x, y, onnx_names[1]), (y, x, onnx_names[0])] {
        let node = &b.graph.nodes[gate];
        if node.inputs != [value] || readers.get(gate_name.as_str()).copied() != Some(1) {
            continue;
        }
        let op = match node.op {
            Op::Sigmoid => Op::Silu,
            Op::HardSigmoid { alpha, beta } if close(alpha, 1.0 / 6.0) && close(beta, 0.5) => Op::HardSwish,
            _ => continue,
        };
        // The gate node is left without readers; `prune_dead` removes it.
        b.add_named(name, op, vec![value], out).map_err(|e| e.to_string())?;
        return Ok(());
    }
    b.add_named(name, Op::Mul, vec![x, y], out).map_err(|e| e.to_string())?;
    Ok(())
}

/// A constant 2-d operand (a linear layer's weight): its values and shape.
fn matrix(arg: Option<&Argument>, what: &str) -> std::result::Result<(Vec<f32>, [usize; 2]), String> {
    let w = arg.and_then(|a| a.value()).ok_or_else(|| format!("{what} is not a constant"))?;
    match dims(&w)[..] {
        [rows, cols] => Ok((f32s(&w).map_err(|e| e.to_string())?, [rows, cols])),
        ref d => Err(format!("{what} has shape {d:?}")),
    }
}

pub(super) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// A linear layer from a weight in [out, in] order; flattens a map input first.
#[allow(clippy::too_many_arguments)]
fn linear(b: &mut Builder, name: String, x: usize, xs: Shape, out_f: usize, weight: Vec<f32>, bias: Option<Vec<f32>>, out: &Argument) -> std::result::Result<usize, String> {
    let mut x = x;
    if matches!(xs, Shape::Map(_)) {
        // Gemm/MatMul on [N, C, 1, 1] only happens after a flatten the exporter folded away.
        let flat = b.unique(&format!("{name}.flatten"));
        x = b.push(flat, Op::Flatten, vec![x]).map_err(|e| e.to_string())?;
    }
    let in_f = b.shapes[x].numel();
    if weight.len() != in_f * out_f {
        return Err(format!("weight has {} values for {in_f} inputs x {out_f} outputs", weight.len()));
    }
    // Bias lengths are checked where the bias is read (`linear_parts`, Gemm's C).
    let has_bias = bias.is_some();
    let i = b.add(name, Op::Linear { in_features: in_f, out_features: out_f, bias: has_bias }, vec![x], out).map_err(|e| e.to_string())?;
    b.tensors.push((i, "weight", TensorData::new(weight, [out_f, in_f])));
    if let Some(bias) = bias {
        b.tensors.push((i, "bias", TensorData::new(bias, [out_f])));
    }
    Ok(i)
}

/// `Add(layer_output, constant)`: folds the constant into the bias of the layer that produced
/// `x` (a linear layer, or a convolution with a per-channel constant), when nothing else reads
/// that layer's output.
fn fold_bias(b: &mut Builder, x: usize, x_name: &str, readers: &HashMap<&str, usize>, c: Vec<f32>, out: &Argument) -> std::result::Result<(), String> {
    if readers.get(x_name).copied().unwrap_or(0) != 1 {
        return Err("adds a constant to a value that other nodes also read".into());
    }
    let channels = b.shapes[x].channels();
    let full: Vec<f32> = match c.len() {
        1 => vec![c[0]; channels],
        n if n == channels => c,
        n => return Err(format!("adds a constant of {n} values to {channels} channels (only per-channel constants fold into a bias)")),
    };
    let node = &mut b.graph.nodes[x];
    match &mut node.op {
        Op::Linear { bias, .. } | Op::Conv2d { bias, .. } => {
            if let Some(existing) = b.tensors.iter_mut().find(|(i, role, _)| *i == x && *role == "bias") {
                let old = f32s(&existing.2).map_err(|e| e.to_string())?;
                if old.len() != channels {
                    return Err(format!("bias has {} values for {channels} channels", old.len()));
                }
                existing.2 = TensorData::new(old.iter().zip(&full).map(|(a, b)| a + b).collect::<Vec<f32>>(), [channels]);
            } else {
                *bias = true;
                b.tensors.push((x, "bias", TensorData::new(full, [channels])));
            }
            b.values.insert(out.name.clone(), x);
            Ok(())
        }
        _ => Err("adds a constant to something other than a linear or convolution output".into()),
    }
}

/// Reshape, Squeeze, Unsqueeze: a flatten when the result is [batch, features], nothing when
/// the per-sample shape does not change; anything else is refused.
fn reshape_like(b: &mut Builder, node: &Node, x: usize, xs: Shape, out: &Argument) -> std::result::Result<(), String> {
    let rank = out.ty.rank();
    let known = out.ty.static_shape().cloned();
    let per_sample: Option<Vec<usize>> = known.as_ref().and_then(|s| s.get(1..).map(|r| r.iter().copied().collect::<Option<Vec<usize>>>())).flatten();
    // The static reshape target, when onnx-ir folded it, resolves -1 and 0 itself.
    let target: Option<Vec<i64>> = match node {
        Node::Reshape(n) => match &n.config.shape {
            onnx_ir::node::reshape::ReshapeInput::Static(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    if rank == 2 {
        let features = per_sample.and_then(|p| p.first().copied()).or_else(|| {
            target.as_ref().and_then(|t| match t.get(1) {
                Some(&v) if v > 0 => Some(v as usize),
                _ => None,
            })
        });
        if features.is_some_and(|f| f != xs.numel()) {
            return Err(format!("reshapes {} values per sample into {features:?}; only flattening is supported", xs.numel()));
        }
        if let Some(t) = &target
            && t.first().is_some_and(|&d| d > 1)
        {
            return Err(format!("target shape {t:?} folds the batch dimension"));
        }
        b.add_named(node.name(), Op::Flatten, vec![x], out).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let same = match (xs, per_sample.as_deref()) {
        (Shape::Map([c, h, w]), Some(p)) => p == [c, h, w],
        (Shape::Flat(n), Some(p)) => p == [n],
        _ => false,
    };
    if same {
        b.values.insert(out.name.clone(), x);
        return Ok(());
    }
    Err(format!("reshape to rank {rank} ({known:?}); only flattening to [batch, features] is supported"))
}

/// Removes nodes whose values never reach the output, renumbering inputs and tensors.
fn prune_dead(mut g: Graph, tensors: &mut Vec<(usize, &'static str, TensorData)>) -> Graph {
    let n = g.nodes.len();
    let mut live = vec![false; n];
    live[g.output] = true;
    live[0] = true;
    for i in (0..n).rev() {
        if live[i] {
            for &j in &g.nodes[i].inputs {
                live[j] = true;
            }
        }
    }
    if live.iter().all(|&l| l) {
        return g;
    }
    let mut new_index = vec![usize::MAX; n];
    let mut k = 0;
    for i in 0..n {
        if live[i] {
            new_index[i] = k;
            k += 1;
        }
    }
    g.nodes = g
        .nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| live[*i])
        .map(|(_, mut node)| {
            node.inputs.iter_mut().for_each(|j| *j = new_index[*j]);
            node
        })
        .collect();
    g.output = new_index[g.output];
    tensors.retain(|(i, _, _)| live[*i]);
    tensors.iter_mut().for_each(|t| t.0 = new_index[t.0]);
    g
}

#[cfg(test)]
mod tests {
    use super::module_path;

    #[test]
    fn module_paths_of_torchscript_node_names() {
        assert_eq!(module_path("/features/features.0/Conv").as_deref(), Some("features.0"));
        assert_eq!(module_path("/layer1/layer1.0/conv1/Conv").as_deref(), Some("layer1.0.conv1"));
        assert_eq!(module_path("/conv1/Conv").as_deref(), Some("conv1"));
        assert_eq!(module_path("Conv_3"), None);
    }
}
