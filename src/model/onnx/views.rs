//! Values an exporter lays out differently from our channels-first graph: ConvNeXt's
//! channels-last blocks, a vision transformer's token sequences (batch-first, sequence-first,
//! or tokens and batch merged into one axis) and multi-head attention's per-head tensors.
//!
//! The graph IR stays channels-first: a token sequence is a map [C, T, 1], a per-token linear
//! layer a 1x1 convolution, a layer norm over the last axis one over the channels. An ONNX value
//! in another layout is recorded as a *view* of the node that computes it, and each step on a
//! view adds the channels-first node with the same function. Attention's reshapes, transposes,
//! gathers and products between the packed in-projection and the merge of the heads become one
//! [`Op::Attention`]; the steps are checked (which part each value is, where the scale comes
//! from, which axes are merged) so a graph that computes something else is refused, not
//! misread.

use burn::tensor::TensorData;
use onnx_ir::node::reshape::ReshapeInput;
use onnx_ir::{Argument, Node};

use super::batch_index;
use super::import::{Builder, channel_scale, elementwise_op, f32s, layer_norm, linear_parts, transpose};
use crate::model::graph::{Op, Shape};

type Step = std::result::Result<(), String>;

/// How an ONNX value lays out the channels of one of our nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// [N, H, W, C] of a map [C, H, W] (ConvNeXt's blocks).
    ChannelsLast,
    /// [N, C, H*W] of a map [C, H, W] (on the way to or from a token sequence).
    Rows,
    /// [N, T, C] of a sequence [C, T, 1].
    Tokens,
    /// [T, N, C] of a sequence (PyTorch's MultiheadAttention works sequence-first).
    SeqFirst,
    /// [T*N, C] of a sequence, token-major (its out-projection's view).
    Merged,
    /// [N*F] of any node: the whole batch in one axis (on the way to a strided gather).
    BatchFlat,
}

impl Layout {
    /// The ONNX rank of the view.
    fn rank(self) -> usize {
        match self {
            Layout::ChannelsLast => 4,
            Layout::Rows | Layout::Tokens | Layout::SeqFirst => 3,
            Layout::Merged => 2,
            Layout::BatchFlat => 1,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Layout::ChannelsLast => "a channels-last view of a feature map",
            Layout::Rows => "a [batch, channels, positions] view of a feature map",
            Layout::Tokens | Layout::SeqFirst | Layout::Merged => "a token sequence",
            Layout::BatchFlat => "the whole batch flattened into one axis",
        }
    }
}

/// What a value inside a multi-head attention block is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The packed in-projection, reshaped or transposed.
    Packed,
    Query,
    Key,
    /// The keys with their last two axes swapped.
    KeyT,
    Value,
    Scores,
    Weights,
    /// The weighted values, [N, heads, T, hd] with its axes permuted by `perm` (`None` after a
    /// reshape).
    Context(Option<[usize; 4]>),
}

/// What an attention block's steps have shown so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionFacts {
    pub heads: Option<usize>,
    /// The product of the constant factors applied to queries, keys and scores.
    pub scale: Option<f64>,
}

fn static_dims(arg: &Argument) -> Option<Vec<Option<usize>>> {
    arg.ty.static_shape().cloned()
}

/// The per-sample dims of an output when the batch is its first axis and the rest are known.
fn per_sample(arg: &Argument) -> Option<Vec<usize>> {
    static_dims(arg)?.get(1..)?.iter().copied().collect()
}

/// A constant scalar (a one-element tensor).
fn scalar(arg: &Argument) -> Option<f64> {
    let v = f32s(&arg.value()?).ok()?;
    (v.len() == 1).then(|| v[0] as f64)
}

fn index_scalar(arg: &Argument) -> Option<i64> {
    let d: TensorData = arg.value()?;
    let v = d.convert::<i64>().try_to_vec::<i64>().ok()?;
    (v.len() == 1).then(|| v[0])
}

/// Adds a node whose output is the ONNX value `out` seen in `layout`.
fn push_view(b: &mut Builder, base: &str, op: Op, inputs: Vec<usize>, out: &Argument, layout: Layout) -> std::result::Result<usize, String> {
    let name = b.unique(base);
    let i = b.push(name, op, inputs).map_err(|e| e.to_string())?;
    b.layouts.insert(out.name.clone(), (i, layout));
    Ok(i)
}

/// `Expand` of a constant (ViT's class token broadcast over the batch): remembered for the
/// `Concat` that prepends it. `None` when the node is not one.
pub fn expand_step(b: &mut Builder, node: &Node) -> Option<Step> {
    let Node::Expand(n) = node else { return None };
    let v = n.inputs.first()?.value()?;
    b.expanded.insert(n.outputs[0].name.clone(), v);
    Some(Ok(()))
}

/// `Concat` of an expanded constant and a token sequence: the class token prepended.
pub fn class_token_step(b: &mut Builder, node: &Node) -> Option<Step> {
    let Node::Concat(n) = node else { return None };
    let token = b.expanded.get(&n.inputs.first()?.name)?.clone();
    let out = &n.outputs[0];
    Some((|| {
        let [_, seq] = &n.inputs[..] else { return Err("prepends a constant to more than one value".to_string()) };
        let (src, layout) = match (b.layouts.get(&seq.name), b.values.get(&seq.name)) {
            (Some(&(src, Layout::Tokens)), _) if n.config.axis == 1 => (src, Some(Layout::Tokens)),
            (None, Some(&src)) if n.config.axis == 2 => (src, None),
            _ => return Err(format!("concatenates a constant along axis {} (only a class token before a token sequence)", n.config.axis)),
        };
        let Shape::Map([c, _, 1]) = b.shapes[src] else { return Err(format!("prepends a token to {:?}", b.shapes[src])) };
        let values = f32s(&token).map_err(|e| e.to_string())?;
        if values.len() != c {
            return Err(format!("a class token of {} values for {c} channels", values.len()));
        }
        let op = Op::ClassToken { channels: c };
        let i = match layout {
            Some(l) => push_view(b, &n.name, op, vec![src], out, l)?,
            None => b.add_named(&n.name, op, vec![src], out).map_err(|e| e.to_string())?,
        };
        b.tensors.push((i, "weight", TensorData::new(values, [c, 1])));
        Ok(())
    })())
}

/// `Reshape(x, [-1])`, the whole batch in one axis, and the `Gather` that reads it back: how
/// PyTorch's dynamo exporter writes `as_strided` (ConvNeXt's pooling). The gather's indices
/// depend on the batch size, so onnx-ir leaves them unevaluated; they are evaluated here
/// ([`batch_index`]) at the file's batch size if it fixes one, else at 1, 2 and 3, and the pair
/// is the reshape it means when every sample reads its own values back in order. `None` when
/// the node is neither.
pub fn batch_flat_step(b: &mut Builder, node: &Node) -> Option<Step> {
    match node {
        Node::Reshape(r) if matches!(&r.config.shape, ReshapeInput::Static(t) if t[..] == [-1]) => {
            let &src = b.values.get(&r.inputs.first()?.name)?;
            b.layouts.insert(r.outputs[0].name.clone(), (src, Layout::BatchFlat));
            Some(Ok(()))
        }
        Node::Gather(g) => match b.layouts.get(&g.inputs.first()?.name) {
            Some(&(src, Layout::BatchFlat)) => Some(strided_gather(b, g, src)),
            _ => None,
        },
        _ => None,
    }
}

/// Most indices of a strided gather evaluated (16 Mi, 128 MiB as int64).
const MAX_GATHER_CHECK: usize = 1 << 24;

fn strided_gather(b: &mut Builder, g: &onnx_ir::node::gather::GatherNode, src: usize) -> Step {
    if g.config.axis != 0 {
        return Err(format!("gathers along axis {} of {}", g.config.axis, Layout::BatchFlat.describe()));
    }
    // onnx-ir names the k-th Gather of the file `gatherk`; its indices are read from the file.
    let file_node = g.name.strip_prefix("gather").and_then(|k| k.parse::<usize>().ok()).and_then(|k| b.proto.node.iter().filter(|n| n.op_type == "Gather").nth(k.checked_sub(1)?));
    let indices = file_node.and_then(|n| n.input.get(1)).ok_or("cannot find the gather's indices in the file")?;
    let per_sample = b.shapes[src].numel();
    let mut layout = None;
    for batch in b.fixed_batch.map_or(vec![1, 2, 3], |d| vec![d]) {
        let total = per_sample.saturating_mul(batch as usize);
        // The indices are as many as the values; a file that fixes a huge batch must not make
        // us build them.
        if total > MAX_GATHER_CHECK {
            return Err(format!("at batch size {batch} its {total} indices are more than the {MAX_GATHER_CHECK} fineprune evaluates"));
        }
        let idx = batch_index::evaluate(b.proto, b.opset, indices, b.input_name, batch, total.saturating_mul(2).saturating_add(1024)).map_err(|e| format!("its indices at batch size {batch}: {e}"))?;
        let in_order = idx.dims.first() == Some(&(batch as usize)) && idx.values.len() == total && idx.values.iter().enumerate().all(|(i, &v)| v == i as i64);
        if !in_order {
            return Err(format!("at batch size {batch} its indices (dims {:?}) do not read each sample's {per_sample} values back in order", idx.dims));
        }
        layout = Some(idx.dims[1..].to_vec());
    }
    let dims = layout.ok_or("no batch size to check")?;
    let out = &g.outputs[0];
    match b.shapes[src] {
        Shape::Map([c, h, w]) if dims == [c, h, w] => drop(b.values.insert(out.name.clone(), src)),
        Shape::Flat(n) if dims == [n] => drop(b.values.insert(out.name.clone(), src)),
        Shape::Map(_) if dims == [per_sample] => drop(b.add_named(&g.name, Op::Flatten, vec![src], out).map_err(|e| e.to_string())?),
        s => return Err(format!("reads each sample back as {dims:?} from {s:?}")),
    }
    Ok(())
}

/// One step on a value that is a view of one of our nodes (or the step that creates such a
/// view from a plain value). `None` when the node has nothing to do with views.
pub fn view_step(b: &mut Builder, node: &Node) -> Option<Step> {
    let first = node.inputs().first()?;
    let out = &node.outputs()[0];
    let Some(&(src, layout)) = b.layouts.get(&first.name) else {
        // A plain feature map entering a view.
        let &src = b.values.get(&first.name)?;
        let Shape::Map([c, h, w]) = b.shapes[src] else { return None };
        let layout = match node {
            Node::Transpose(t) if t.config.perm == [0, 2, 3, 1] => Layout::ChannelsLast,
            Node::Reshape(_) if per_sample(out) == Some(vec![c, h * w]) => Layout::Rows,
            _ => return None,
        };
        b.layouts.insert(out.name.clone(), (src, layout));
        return Some(Ok(()));
    };
    if layout == Layout::BatchFlat {
        return Some(Err(format!("uses {} other than to gather each sample's values back", layout.describe())));
    }
    let Shape::Map([c, t, w]) = b.shapes[src] else { return Some(Err("a view of a flat vector".into())) };
    let sequence = w == 1;
    let per_token = layout != Layout::Rows;
    let same = |b: &mut Builder, l: Layout| {
        b.layouts.insert(out.name.clone(), (src, l));
        Ok(())
    };
    let mut step = || -> Step {
        match node {
            Node::Transpose(tr) => {
                let perm = tr.config.perm.as_slice();
                match (layout, perm) {
                    (Layout::ChannelsLast, [0, 3, 1, 2]) => {
                        b.values.insert(out.name.clone(), src);
                        Ok(())
                    }
                    (Layout::Rows, [0, 2, 1]) if sequence => same(b, Layout::Tokens),
                    (Layout::Rows, [0, 2, 1]) => push_view(b, &format!("{}.tokens", tr.name), Op::Tokens, vec![src], out, Layout::Tokens).map(drop),
                    (Layout::Tokens, [0, 2, 1]) => same(b, Layout::Rows),
                    (Layout::Tokens, [1, 0, 2]) => same(b, Layout::SeqFirst),
                    (Layout::SeqFirst, [1, 0, 2]) => same(b, Layout::Tokens),
                    _ => Err(format!("transposes {} with {perm:?}", layout.describe())),
                }
            }
            Node::Reshape(_) | Node::Squeeze(_) | Node::Unsqueeze(_) => {
                let dims = static_dims(out).unwrap_or_default();
                match (layout, out.ty.rank()) {
                    (Layout::Rows, 4) => {
                        let p = per_sample(out).ok_or("reshapes to an unknown shape")?;
                        if Shape::Map([p[0], p[1], p[2]]) == b.shapes[src] {
                            b.values.insert(out.name.clone(), src);
                            Ok(())
                        } else if p == [c, t * w, 1] {
                            b.add_named(&format!("{}.tokens", node.name()), Op::Tokens, vec![src], out).map(drop).map_err(|e| e.to_string())
                        } else {
                            Err(format!("reshapes {} to {p:?}", layout.describe()))
                        }
                    }
                    (Layout::SeqFirst, 2) if sequence => same(b, Layout::Merged),
                    (Layout::Merged, 3) if sequence && dims.first() == Some(&Some(t)) && dims.get(2) == Some(&Some(c)) => same(b, Layout::SeqFirst),
                    (l, r) if r == l.rank() && per_token && per_sample(out).is_some_and(|p| l == Layout::Tokens && p == [t, c]) => same(b, l),
                    (l, r) if r >= 4 && sequence && l != Layout::Rows && l != Layout::ChannelsLast => {
                        // Queries, keys and values packed along the channels: attention begins.
                        if c % 3 != 0 {
                            return Err(format!("splits {c} channels into queries, keys and values"));
                        }
                        b.attention.insert(out.name.clone(), (src, Part::Packed));
                        b.attention_facts.entry(src).or_default();
                        packed_heads(b, src, out)
                    }
                    _ => Err(format!("reshapes {} to rank {} ({dims:?})", layout.describe(), out.ty.rank())),
                }
            }
            // Everything else adds the channels-first node; its value stays in this layout.
            _ if !per_token => Err(format!("uses {} in a way fineprune does not support", layout.describe())),
            Node::LayerNormalization(n) if n.config.axis == -1 || n.config.axis == layout.rank() as i64 - 1 => {
                let i = layer_norm(b, n, src, out)?;
                b.values.remove(&out.name);
                same_node(b, out, i, layout)
            }
            Node::Linear(_) | Node::MatMul(_) if node.inputs().get(1).is_some_and(|a| a.value().is_some()) => {
                let (name, weight, out_f, bias) = linear_parts(b, node)?;
                if weight.len() != c * out_f {
                    return Err(format!("a weight of {} values for {c} channels", weight.len()));
                }
                let op = Op::Conv2d { in_channels: c, out_channels: out_f, kernel: [1, 1], stride: [1, 1], padding: [0, 0], dilation: [1, 1], groups: 1, bias: bias.is_some() };
                let i = b.push(name, op, vec![src]).map_err(|e| e.to_string())?;
                b.tensors.push((i, "weight", TensorData::new(weight, [out_f, c, 1, 1])));
                if let Some(bias) = bias {
                    b.tensors.push((i, "bias", TensorData::new(bias, [out_f])));
                }
                same_node(b, out, i, layout)
            }
            Node::Mul(n) if n.inputs.get(1).is_some_and(|a| a.value().is_some()) => {
                let v = f32s(&n.inputs[1].value().expect("checked")).map_err(|e| e.to_string())?;
                let i = channel_scale(b, &n.name, src, v, out)?;
                b.values.remove(&out.name);
                same_node(b, out, i, layout)
            }
            Node::Add(n) => match (n.inputs.get(1).and_then(|a| b.layouts.get(&a.name)).copied(), n.inputs.get(1).and_then(|a| a.value())) {
                (Some((other, l)), _) if l == layout => push_view(b, &n.name, Op::Add, vec![src, other], out, layout).map(drop),
                (None, Some(table)) if layout == Layout::Tokens && sequence => {
                    // [1, T, C] (PyTorch's position embedding) to our [C, T].
                    let v = f32s(&table).map_err(|e| e.to_string())?;
                    let shape: Vec<usize> = table.shape().iter().copied().collect();
                    if !matches!(shape[..], [1, a, b] | [a, b] if a == t && b == c) {
                        return Err(format!("adds a table of shape {shape:?} to a sequence of {t} tokens x {c} channels"));
                    }
                    if v.len() != t * c {
                        return Err(format!("adds {} values to a sequence of {t} tokens x {c} channels", v.len()));
                    }
                    let i = push_view(b, &n.name, Op::PositionEmbedding { channels: c, tokens: t }, vec![src], out, layout)?;
                    b.tensors.push((i, "weight", TensorData::new(transpose(&v, t, c), [c, t])));
                    Ok(())
                }
                _ => Err(format!("adds to {} something other than a token sequence in the same layout or a [1, tokens, channels] table", layout.describe())),
            },
            Node::Gather(n) if layout == Layout::Tokens && n.config.axis == 1 && sequence => {
                let at = n.inputs.get(1).and_then(index_scalar).ok_or("the token index is not a constant scalar")?;
                let index = usize::try_from(if at < 0 { at + t as i64 } else { at }).map_err(|_| format!("token {at} of {t}"))?;
                b.add_named(&n.name, Op::TokenSelect { index }, vec![src], out).map(drop).map_err(|e| e.to_string())
            }
            Node::ReduceMean(n) if layout == Layout::Tokens && sequence => {
                let onnx_ir::node::reduce::ReduceAxes::Static(axes) = &n.config.axes else { return Err("the axes are not constants".into()) };
                if axes.as_slice() != [1] {
                    return Err(format!("a mean over axes {axes:?} of a token sequence (only over the tokens)"));
                }
                let pool = b.unique(&n.name);
                let p = b.push(pool, Op::GlobalAvgPool, vec![src]).map_err(|e| e.to_string())?;
                if n.config.keepdims {
                    same_node(b, out, p, layout)
                } else {
                    b.add_named(&format!("{}.flatten", n.name), Op::Flatten, vec![p], out).map(drop).map_err(|e| e.to_string())
                }
            }
            Node::Dropout(_) | Node::Identity(_) => same(b, layout),
            _ => match elementwise_op(node) {
                Some(op) => push_view(b, node.name(), op?, vec![src], out, layout).map(drop),
                None => Err(format!("uses {} in a way fineprune does not support", layout.describe())),
            },
        }
    };
    Some(step())
}

fn same_node(b: &mut Builder, out: &Argument, i: usize, layout: Layout) -> Step {
    b.layouts.insert(out.name.clone(), (i, layout));
    Ok(())
}

fn record_heads(b: &mut Builder, src: usize, h: usize) -> Step {
    let facts = b.attention_facts.entry(src).or_default();
    match facts.heads {
        Some(known) if known != h => Err(format!("{known} and {h} heads in one attention block")),
        _ => {
            facts.heads = Some(h);
            Ok(())
        }
    }
}

/// The number of heads from packed values reshaped to [N, T, 3, h, hd] (timm's and our own
/// export's form), when `out` is that.
fn packed_heads(b: &mut Builder, src: usize, out: &Argument) -> Step {
    let Shape::Map([c3, t, _]) = b.shapes[src] else { return Ok(()) };
    match static_dims(out).as_deref() {
        Some(&[_, Some(tokens), Some(3), Some(h), Some(hd)]) if tokens == t && h * hd * 3 == c3 => record_heads(b, src, h),
        _ => Ok(()),
    }
}

/// Does `perm` swap the last two axes and keep the others in place?
fn swaps_last_two(perm: &[i64]) -> bool {
    let r = perm.len();
    r >= 2 && perm[..r - 2].iter().enumerate().all(|(i, &p)| p == i as i64) && perm[r - 2] == r as i64 - 1 && perm[r - 1] == r as i64 - 2
}

/// One step inside a multi-head attention block (see [`Part`]). `None` when the node reads no
/// attention value.
pub fn attention_step(b: &mut Builder, node: &Node) -> Option<Step> {
    let first = node.inputs().first()?;
    let &(src, part) = b.attention.get(&first.name)?;
    let out = node.outputs()[0].clone();
    let Shape::Map([c3, t, _]) = b.shapes[src] else { return Some(Err("attention on a flat vector".into())) };
    let c = c3 / 3;
    let mut step = || -> Step {
        // The number of heads, from any per-head value whose shape is known: [N, h, T, hd] or,
        // for transposed keys, [N, h, hd, T].
        for arg in node.inputs() {
            let (Some(d), Some(&(_, p))) = (static_dims(arg), b.attention.get(&arg.name)) else { continue };
            if !matches!(p, Part::Query | Part::Key | Part::KeyT | Part::Value) || d.len() != 4 {
                continue;
            }
            if let [_, Some(h), Some(a), Some(z)] = d[..]
                && h > 0
                && c % h == 0
                && ((a, z) == (t, c / h) || (a, z) == (c / h, t))
            {
                record_heads(b, src, h)?;
            }
        }
        if part == Part::Packed && matches!(node, Node::Reshape(_)) {
            packed_heads(b, src, &out)?;
        }
        let scale_by = |b: &mut Builder, f: f64| {
            let facts = b.attention_facts.entry(src).or_default();
            facts.scale = Some(facts.scale.unwrap_or(1.0) * f);
        };
        let next = match (part, node) {
            (_, Node::Dropout(_) | Node::Identity(_)) => part,
            (Part::Packed, Node::Reshape(_) | Node::Squeeze(_) | Node::Unsqueeze(_) | Node::Transpose(_)) => Part::Packed,
            (Part::Packed, Node::Gather(n)) => {
                let d = static_dims(&n.inputs[0]).unwrap_or_default();
                let k = n.inputs.get(1).and_then(index_scalar).ok_or("the part index is not a constant scalar")?;
                if d.get(n.config.axis) != Some(&Some(3)) {
                    return Err(format!("gathers along axis {} of {d:?} (queries, keys and values are an axis of 3)", n.config.axis));
                }
                match k {
                    0 | -3 => Part::Query,
                    1 | -2 => Part::Key,
                    2 | -1 => Part::Value,
                    _ => return Err(format!("part {k} of queries, keys and values")),
                }
            }
            (Part::Query | Part::Key | Part::KeyT | Part::Value, Node::Reshape(_) | Node::Squeeze(_) | Node::Unsqueeze(_)) => part,
            (Part::Key | Part::KeyT, Node::Transpose(tr)) if swaps_last_two(&tr.config.perm) => if part == Part::Key { Part::KeyT } else { Part::Key },
            (Part::Query | Part::Value | Part::Key, Node::Transpose(tr)) if !tr.config.perm.is_empty() && tr.config.perm.len() <= 3 => part,
            (Part::Query | Part::KeyT | Part::Scores, Node::Mul(_) | Node::Div(_)) => {
                let f = node.inputs().get(1).and_then(scalar).ok_or("scales by something other than a constant scalar")?;
                if !f.is_finite() || f == 0.0 {
                    return Err(format!("scales by {f}"));
                }
                scale_by(b, if matches!(node, Node::Div(_)) { 1.0 / f } else { f });
                part
            }
            (Part::Query, Node::MatMul(n)) => match n.inputs.get(1).and_then(|a| b.attention.get(&a.name)) {
                Some(&(s, Part::KeyT)) if s == src => Part::Scores,
                _ => return Err("multiplies the queries by something other than the transposed keys of the same block".into()),
            },
            // onnx-ir coalesces MatMul(Q, K^T) -> scale -> Softmax -> MatMul(., V) into one node
            // (our own export's form); its K is the keys before the transpose.
            (Part::Query, Node::Attention(n)) => {
                let c = &n.config;
                let parts: Vec<Option<(usize, Part)>> = n.inputs.iter().filter(|a| !a.is_optional()).map(|a| b.attention.get(&a.name).copied()).collect();
                if parts != [Some((src, Part::Query)), Some((src, Part::Key)), Some((src, Part::Value))] {
                    return Err("attends with a mask, a cache or inputs from elsewhere (only self-attention on one block's queries, keys and values)".into());
                }
                if c.is_causal || c.softcap != 0.0 || c.qk_matmul_output_mode != onnx_ir::node::attention::AttentionQkMatmulOutputMode::Matmul || n.outputs.len() != 1 {
                    return Err("causal, soft-capped or extra outputs (only plain scaled dot-product attention)".into());
                }
                let heads = b.attention_facts.get(&src).and_then(|f| f.heads).ok_or("the number of heads is not known from any shape")?;
                // ONNX: an absent scale is 1/sqrt(head size).
                scale_by(b, c.scale.unwrap_or(1.0 / ((c3 / 3 / heads) as f64).sqrt()));
                Part::Context(Some([0, 1, 2, 3]))
            }
            (Part::Scores, Node::Softmax(n)) if static_dims(&n.inputs[0]).is_none_or(|d| n.config.axis + 1 == d.len()) => Part::Weights,
            (Part::Weights, Node::MatMul(n)) => match n.inputs.get(1).and_then(|a| b.attention.get(&a.name)) {
                Some(&(s, Part::Value)) if s == src => Part::Context(Some([0, 1, 2, 3])),
                _ => return Err("weights something other than the values of the same block".into()),
            },
            (Part::Context(Some(axes)), Node::Transpose(tr)) if tr.config.perm.len() == 4 => {
                let mut new = [0; 4];
                for (k, &p) in tr.config.perm.iter().enumerate() {
                    new[k] = *axes.get(usize::try_from(p).map_err(|_| "a negative axis")?).ok_or("an axis out of range")?;
                }
                Part::Context(Some(new))
            }
            (Part::Context(Some(axes)), Node::Reshape(_)) => {
                // The heads merge back into channels only when head and feature are the last
                // two axes, in that order; the first two say which layout the sequence is in.
                let rank = out.ty.rank();
                let layout = match (axes, rank) {
                    ([2, 0, 1, 3], 3) => Layout::SeqFirst,
                    ([2, 0, 1, 3], 2) => Layout::Merged,
                    ([0, 2, 1, 3], 3) => Layout::Tokens,
                    _ => return Err(format!("merges the heads of a [batch, heads, tokens, features] value permuted {axes:?} into rank {rank}")),
                };
                let facts = b.attention_facts.get(&src).copied().unwrap_or_default();
                let heads = facts.heads.ok_or("the number of heads is not known from any shape")?;
                let op = Op::Attention { heads, scale: facts.scale.unwrap_or(1.0) };
                let name = format!("{}.attention", b.graph.nodes[src].name);
                return push_view(b, &name, op, vec![src], &out, layout).map(drop);
            }
            _ => return Err(format!("is not a step of multi-head attention fineprune recognises (at the {part:?})")),
        };
        b.attention.insert(out.name.clone(), (src, next));
        Ok(())
    };
    Some(step())
}
