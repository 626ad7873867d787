//! Graph IR -> ONNX (opset 13, weights embedded), built with the protobuf types `onnx-ir`
//! re-exports. The batch dimension is symbolic; the input and output keep the names of the
//! model the user imported (so code that fed the suspect model feeds the repaired one), and a
//! model imported with NHWC input or a softmax output gets them back.

use std::collections::{HashMap, HashSet};

use onnx_ir::{AttributeProto, AttributeType, GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use super::OnnxIo;
use crate::error::{Error, Result};
use crate::model::graph::{Op, Shape};
use crate::model::ModelFile;

/// The opset we write unless an op needs a later one (17 for a layer norm, 19 for a ceil-mode
/// average pool, 20 for GELU).
pub const OPSET: i64 = 13;

/// The opset an op needs: 19 for an average pool in ceil mode (onnx-ir reads AveragePool's
/// ceil_mode only from opset 19 on), 17 for LayerNormalization, 20 for GELU (ONNX's Gelu
/// operator), else [`OPSET`].
fn opset_for(op: &Op) -> i64 {
    match op {
        Op::AvgPool { ceil_mode: true, .. } => 19,
        Op::Gelu => 20,
        Op::LayerNorm { .. } => 17,
        _ => OPSET,
    }
}

// Protobuf builders, public for the structure-aware fuzz target (fuzz/fuzz_targets/onnx_graph.rs),
// which writes arbitrary (also negative or huge) values through them.

fn to_i64<T: Copy + TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// An INTS attribute.
pub fn ints<T: Copy + TryInto<i64>>(name: &str, v: &[T]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.iter().map(|&x| to_i64(x)).collect();
    a
}

/// An INT attribute.
pub fn int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

/// A FLOAT attribute.
pub fn float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

fn tensor(name: &str, dims: &[usize], values: Vec<f32>) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.float_data = values;
    t
}

/// A 1-d int64 tensor (shapes, slice bounds).
fn int64_tensor(name: &str, values: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 7;
    t.dims = vec![values.len() as i64];
    t.int64_data = values.to_vec();
    t
}

/// A 0-d int64 tensor (a Gather index that drops its axis).
fn int64_scalar(name: &str, value: i64) -> TensorProto {
    let mut t = int64_tensor(name, &[value]);
    t.dims.clear();
    t
}

/// A float tensor's name and shape; `None` dimensions are the symbolic batch.
pub fn value_info<T: Copy + TryInto<i64>>(name: &str, dims: &[Option<T>]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let tt = v.type_.mut_or_insert_default().mut_tensor_type();
    tt.elem_type = 1;
    let shape = tt.shape.mut_or_insert_default();
    for d in dims {
        shape.dim.push(Default::default());
        let dim = shape.dim.last_mut().expect("just pushed");
        match d {
            Some(n) => dim.set_dim_value(to_i64(*n)),
            None => dim.set_dim_param("batch".into()),
        }
    }
    v
}

fn node(op: &str, name: &str, inputs: Vec<String>, output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs;
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

/// The ONNX bytes of a model. Masked channels are written as a multiplication by a constant
/// 0/1 mask (fold the model first to remove them physically).
pub fn to_onnx_bytes(file: &ModelFile) -> Result<Vec<u8>> {
    let model = &file.model;
    let g = &model.graph;
    let shapes = g.validate()?;
    let io = file.info.onnx.clone().unwrap_or_else(|| OnnxIo { input_name: "input".into(), output_name: "logits".into(), ..Default::default() });
    let tensors: HashMap<String, burn::tensor::TensorData> = model.named_tensors().into_iter().collect();
    let mut graph = GraphProto::new();
    graph.name = "fineprune".into();
    let mut used: HashSet<String> = HashSet::from([io.input_name.clone(), io.output_name.clone()]);
    let mut fresh = |base: &str| {
        let mut name = base.to_string();
        let mut k = 2;
        while used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        used.insert(name.clone());
        name
    };
    // A weight as an initializer, in its own shape or (same values) in `shape`.
    let init_shaped = |graph: &mut GraphProto, name: String, role: &str, shape: Option<&[usize]>| -> Result<String> {
        let key = format!("{name}.{role}");
        let d = tensors.get(&key).ok_or_else(|| Error::model(format!("no tensor {key}")))?;
        let dims: Vec<usize> = shape.map(<[usize]>::to_vec).unwrap_or_else(|| d.shape().iter().copied().collect());
        let values = d.try_to_vec::<f32>().map_err(|e| Error::model(format!("{key}: {e:?}")))?;
        graph.initializer.push(tensor(&key, &dims, values));
        Ok(key)
    };
    let init = |graph: &mut GraphProto, name: String, role: &str| init_shaped(graph, name, role, None);
    let [c, h, w] = g.input_shape;
    let mut value: Vec<String> = Vec::with_capacity(g.nodes.len());
    if io.nhwc {
        graph.input.push(value_info(&io.input_name, &[None, Some(h), Some(w), Some(c)]));
        let t = fresh("input_nchw");
        graph.node.push(node("Transpose", "input_to_nchw", vec![io.input_name.clone()], &t, vec![ints("perm", &[0, 3, 1, 2])]));
        value.push(t);
    } else {
        graph.input.push(value_info(&io.input_name, &[None, Some(c), Some(h), Some(w)]));
        value.push(io.input_name.clone());
    }
    let last = g.output;
    for (i, n) in g.nodes.iter().enumerate().skip(1) {
        let ins: Vec<String> = n.inputs.iter().map(|&j| value[j].clone()).collect();
        let out = if i == last && !io.softmax_output { io.output_name.clone() } else { fresh(&n.name) };
        let name = n.name.clone();
        let emit = |graph: &mut GraphProto, op: &str, inputs: Vec<String>, attrs: Vec<AttributeProto>| graph.node.push(node(op, &name, inputs, &out, attrs));
        match &n.op {
            Op::Input => return Err(Error::model("a second input node")),
            Op::Conv2d { kernel, stride, padding, dilation, groups, bias, .. } => {
                let mut inputs = vec![ins[0].clone(), init(&mut graph, name.clone(), "weight")?];
                if *bias {
                    inputs.push(init(&mut graph, name.clone(), "bias")?);
                }
                let attrs = vec![ints("kernel_shape", kernel), ints("strides", stride), ints("pads", &[padding[0], padding[1], padding[0], padding[1]]), ints("dilations", dilation), int("group", *groups as i64)];
                emit(&mut graph, "Conv", inputs, attrs);
            }
            Op::BatchNorm { epsilon, momentum, .. } => {
                let mut inputs = vec![ins[0].clone()];
                for role in ["weight", "bias", "running_mean", "running_var"] {
                    inputs.push(init(&mut graph, name.clone(), role)?);
                }
                emit(&mut graph, "BatchNormalization", inputs, vec![float("epsilon", *epsilon as f32), float("momentum", (1.0 - momentum) as f32)]);
            }
            Op::LayerNorm { epsilon, .. } => {
                // ONNX normalises the trailing axes: a map goes channels-last and back.
                let scale = init(&mut graph, name.clone(), "weight")?;
                let shift = init(&mut graph, name.clone(), "bias")?;
                match shapes[i] {
                    Shape::Flat(_) => emit(&mut graph, "LayerNormalization", vec![ins[0].clone(), scale, shift], vec![int("axis", -1), float("epsilon", *epsilon as f32)]),
                    Shape::Map(_) => {
                        let (last, normed) = (fresh(&format!("{name}.nhwc")), fresh(&format!("{name}.normed")));
                        graph.node.push(node("Transpose", &format!("{name}.to_nhwc"), vec![ins[0].clone()], &last, vec![ints("perm", &[0, 2, 3, 1])]));
                        graph.node.push(node("LayerNormalization", &format!("{name}.norm"), vec![last, scale, shift], &normed, vec![int("axis", -1), float("epsilon", *epsilon as f32)]));
                        emit(&mut graph, "Transpose", vec![normed], vec![ints("perm", &[0, 3, 1, 2])]);
                    }
                }
            }
            Op::Relu => emit(&mut graph, "Relu", ins, vec![]),
            Op::LeakyRelu { alpha } => emit(&mut graph, "LeakyRelu", ins, vec![float("alpha", *alpha as f32)]),
            Op::Sigmoid => emit(&mut graph, "Sigmoid", ins, vec![]),
            Op::Tanh => emit(&mut graph, "Tanh", ins, vec![]),
            Op::Clip { min, max } => {
                // Opset 11 on: the bounds are scalar inputs, not attributes.
                let (lo, hi) = (format!("{name}.min"), format!("{name}.max"));
                graph.initializer.push(tensor(&lo, &[], vec![*min as f32]));
                graph.initializer.push(tensor(&hi, &[], vec![*max as f32]));
                emit(&mut graph, "Clip", vec![ins[0].clone(), lo, hi], vec![]);
            }
            Op::HardSigmoid { alpha, beta } => emit(&mut graph, "HardSigmoid", ins, vec![float("alpha", *alpha as f32), float("beta", *beta as f32)]),
            // x * gate(x), the form exporters write and our importer reads back (ONNX's own
            // HardSwish needs opset 14).
            Op::HardSwish | Op::Silu => {
                let gate = fresh(&format!("{name}.gate"));
                let (op, attrs) = match n.op {
                    Op::HardSwish => ("HardSigmoid", vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)]),
                    _ => ("Sigmoid", vec![]),
                };
                graph.node.push(node(op, &format!("{name}.gate"), vec![ins[0].clone()], &gate, attrs));
                emit(&mut graph, "Mul", vec![ins[0].clone(), gate], vec![]);
            }
            Op::Gelu => emit(&mut graph, "Gelu", ins, vec![]),
            Op::Mul => emit(&mut graph, "Mul", ins, vec![]),
            Op::ChannelShuffle { groups } => {
                // Reshape to [N, g, C/g, H, W], swap the two channel axes, reshape back; a 0 in
                // a Reshape target keeps the input's (batch) dimension.
                let Shape::Map([c, h, w]) = shapes[i] else { return Err(Error::model(format!("{name}: a channel shuffle of a flat vector"))) };
                let grouped = format!("{name}.grouped_shape");
                let flat = format!("{name}.shape");
                graph.initializer.push(int64_tensor(&grouped, &[0, *groups as i64, (c / groups) as i64, h as i64, w as i64]));
                graph.initializer.push(int64_tensor(&flat, &[0, c as i64, h as i64, w as i64]));
                let (v, t) = (fresh(&format!("{name}.grouped")), fresh(&format!("{name}.transposed")));
                graph.node.push(node("Reshape", &format!("{name}.group"), vec![ins[0].clone(), grouped], &v, vec![]));
                graph.node.push(node("Transpose", &format!("{name}.swap"), vec![v], &t, vec![ints("perm", &[0, 2, 1, 3, 4])]));
                emit(&mut graph, "Reshape", vec![t, flat], vec![]);
            }
            Op::ChannelSlice { start, end } => {
                let names = [format!("{name}.starts"), format!("{name}.ends"), format!("{name}.axes")];
                for (n, v) in names.iter().zip([*start as i64, *end as i64, 1]) {
                    graph.initializer.push(int64_tensor(n, &[v]));
                }
                let mut inputs = vec![ins[0].clone()];
                inputs.extend(names);
                emit(&mut graph, "Slice", inputs, vec![]);
            }
            Op::MaxPool { kernel, stride, padding, ceil_mode } => {
                let attrs = vec![ints("kernel_shape", kernel), ints("strides", stride), ints("pads", &[padding[0], padding[1], padding[0], padding[1]]), int("ceil_mode", *ceil_mode as i64)];
                emit(&mut graph, "MaxPool", ins, attrs);
            }
            Op::AvgPool { kernel, stride, padding, ceil_mode, count_include_pad } => {
                let attrs = vec![
                    ints("kernel_shape", kernel),
                    ints("strides", stride),
                    ints("pads", &[padding[0], padding[1], padding[0], padding[1]]),
                    int("ceil_mode", *ceil_mode as i64),
                    int("count_include_pad", *count_include_pad as i64),
                ];
                emit(&mut graph, "AveragePool", ins, attrs);
            }
            Op::GlobalAvgPool => emit(&mut graph, "GlobalAveragePool", ins, vec![]),
            Op::Flatten => emit(&mut graph, "Flatten", ins, vec![int("axis", 1)]),
            Op::Linear { bias, .. } => {
                let mut inputs = vec![ins[0].clone(), init(&mut graph, name.clone(), "weight")?];
                if *bias {
                    inputs.push(init(&mut graph, name.clone(), "bias")?);
                }
                emit(&mut graph, "Gemm", inputs, vec![int("transB", 1)]);
            }
            Op::Add => {
                // Pairwise, so the file uses only operators our importer reads back.
                let mut acc = ins[0].clone();
                for (k, other) in ins.iter().enumerate().skip(1) {
                    let target = if k + 1 == ins.len() { out.clone() } else { fresh(&format!("{name}.partial{k}")) };
                    graph.node.push(node("Add", &format!("{name}.{k}"), vec![acc, other.clone()], &target, vec![]));
                    acc = target;
                }
            }
            Op::Concat => emit(&mut graph, "Concat", ins, vec![int("axis", 1)]),
            // Inference graph: dropout is the identity.
            Op::Dropout { .. } => emit(&mut graph, "Identity", ins, vec![]),
            // Token sequences are [N, C, T, 1] here; the views below are the forms PyTorch's
            // exporter writes ([N, C, T] rows, [N, T, C] tokens), which our importer reads back.
            Op::Tokens => {
                let Shape::Map([c, t, _]) = shapes[i] else { return Err(Error::model(format!("{name}: tokens of a flat vector"))) };
                let rows = fresh(&format!("{name}.rows"));
                let (rows_shape, map_shape) = (format!("{name}.rows_shape"), format!("{name}.shape"));
                graph.initializer.push(int64_tensor(&rows_shape, &[0, c as i64, t as i64]));
                graph.initializer.push(int64_tensor(&map_shape, &[0, c as i64, t as i64, 1]));
                graph.node.push(node("Reshape", &format!("{name}.flatten"), vec![ins[0].clone(), rows_shape], &rows, vec![]));
                emit(&mut graph, "Reshape", vec![rows, map_shape], vec![]);
            }
            Op::ClassToken { channels } => {
                // Expand the token to [N, C, 1, 1] (N read from the input) and prepend it.
                let c = *channels;
                let token = init_shaped(&mut graph, name.clone(), "weight", Some(&[1, c, 1, 1]))?;
                let (shape, batch, target, tokens) = (fresh(&format!("{name}.input_shape")), fresh(&format!("{name}.batch")), fresh(&format!("{name}.target")), fresh(&format!("{name}.expanded")));
                let (zero, one, rest) = (format!("{name}.zero"), format!("{name}.one"), format!("{name}.rest"));
                graph.initializer.push(int64_tensor(&zero, &[0]));
                graph.initializer.push(int64_tensor(&one, &[1]));
                graph.initializer.push(int64_tensor(&rest, &[c as i64, 1, 1]));
                graph.node.push(node("Shape", &format!("{name}.shape"), vec![ins[0].clone()], &shape, vec![]));
                graph.node.push(node("Slice", &format!("{name}.slice"), vec![shape, zero, one], &batch, vec![]));
                graph.node.push(node("Concat", &format!("{name}.concat_shape"), vec![batch, rest], &target, vec![int("axis", 0)]));
                graph.node.push(node("Expand", &format!("{name}.expand"), vec![token, target], &tokens, vec![]));
                emit(&mut graph, "Concat", vec![tokens, ins[0].clone()], vec![int("axis", 2)]);
            }
            Op::PositionEmbedding { channels, tokens } => {
                let table = init_shaped(&mut graph, name.clone(), "weight", Some(&[1, *channels, *tokens, 1]))?;
                emit(&mut graph, "Add", vec![ins[0].clone(), table], vec![]);
            }
            Op::Attention { heads, scale } => {
                let Shape::Map([c, t, _]) = shapes[i] else { return Err(Error::model(format!("{name}: attention on a flat vector"))) };
                let (h, hd) = (*heads, c / heads);
                let v = |what: &str| format!("{name}.{what}");
                let shape = |graph: &mut GraphProto, what: &str, dims: &[i64]| {
                    graph.initializer.push(int64_tensor(&v(what), dims));
                    v(what)
                };
                let rows = shape(&mut graph, "rows_shape", &[0, 3 * c as i64, t as i64]);
                let split = shape(&mut graph, "split_shape", &[0, t as i64, 3, h as i64, hd as i64]);
                let merged = shape(&mut graph, "merged_shape", &[0, t as i64, c as i64]);
                let back = shape(&mut graph, "map_shape", &[0, c as i64, t as i64, 1]);
                let scale_name = v("scale");
                graph.initializer.push(tensor(&scale_name, &[], vec![*scale as f32]));
                let mut step = |graph: &mut GraphProto, op: &str, what: &str, inputs: Vec<String>, attrs: Vec<AttributeProto>| {
                    let o = fresh(&v(what));
                    graph.node.push(node(op, &v(what), inputs, &o, attrs));
                    o
                };
                let r = step(&mut graph, "Reshape", "rows", vec![ins[0].clone(), rows], vec![]);
                let tok = step(&mut graph, "Transpose", "tokens", vec![r], vec![ints("perm", &[0, 2, 1])]);
                let parts = step(&mut graph, "Reshape", "split", vec![tok, split], vec![]);
                // [3, N, heads, T, hd]
                let parts = step(&mut graph, "Transpose", "parts", vec![parts], vec![ints("perm", &[2, 0, 3, 1, 4])]);
                let mut qkv = Vec::new();
                for (k, what) in ["q", "k", "v"].into_iter().enumerate() {
                    let index = v(&format!("{what}_index"));
                    graph.initializer.push(int64_scalar(&index, k as i64));
                    qkv.push(step(&mut graph, "Gather", what, vec![parts.clone(), index], vec![int("axis", 0)]));
                }
                let k_t = step(&mut graph, "Transpose", "k_t", vec![qkv[1].clone()], vec![ints("perm", &[0, 1, 3, 2])]);
                let scores = step(&mut graph, "MatMul", "scores", vec![qkv[0].clone(), k_t], vec![]);
                let scores = step(&mut graph, "Mul", "scaled", vec![scores, scale_name], vec![]);
                let weights = step(&mut graph, "Softmax", "weights", vec![scores], vec![int("axis", -1)]);
                let ctx = step(&mut graph, "MatMul", "context", vec![weights, qkv[2].clone()], vec![]);
                let ctx = step(&mut graph, "Transpose", "context_tokens", vec![ctx], vec![ints("perm", &[0, 2, 1, 3])]);
                let ctx = step(&mut graph, "Reshape", "merged", vec![ctx, merged], vec![]);
                let ctx = step(&mut graph, "Transpose", "rows_out", vec![ctx], vec![ints("perm", &[0, 2, 1])]);
                emit(&mut graph, "Reshape", vec![ctx, back], vec![]);
            }
            Op::TokenSelect { index } => {
                let Shape::Map([c, t, _]) = shapes[n.inputs[0]] else { return Err(Error::model(format!("{name}: a token of a flat vector"))) };
                let (rows_shape, at) = (format!("{name}.rows_shape"), format!("{name}.index"));
                graph.initializer.push(int64_tensor(&rows_shape, &[0, c as i64, t as i64]));
                graph.initializer.push(int64_scalar(&at, *index as i64));
                let (rows, tok) = (fresh(&format!("{name}.rows")), fresh(&format!("{name}.tokens")));
                graph.node.push(node("Reshape", &format!("{name}.flatten"), vec![ins[0].clone(), rows_shape], &rows, vec![]));
                graph.node.push(node("Transpose", &format!("{name}.transpose"), vec![rows], &tok, vec![ints("perm", &[0, 2, 1])]));
                emit(&mut graph, "Gather", vec![tok, at], vec![int("axis", 1)]);
            }
            Op::ChannelMask { keep } => {
                let dims: Vec<usize> = match shapes[i] {
                    Shape::Map(_) => vec![1, keep.len(), 1, 1],
                    Shape::Flat(_) => vec![1, keep.len()],
                };
                let mask_name = format!("{name}.keep");
                graph.initializer.push(tensor(&mask_name, &dims, keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect()));
                emit(&mut graph, "Mul", vec![ins[0].clone(), mask_name], vec![]);
            }
        }
        value.push(out);
    }
    let classes = shapes[last].numel();
    if io.softmax_output {
        graph.node.push(node("Softmax", "softmax", vec![value[last].clone()], &io.output_name, vec![int("axis", 1)]));
    } else if value[last] != io.output_name {
        graph.node.push(node("Identity", "output", vec![value[last].clone()], &io.output_name, vec![]));
    }
    graph.output.push(value_info(&io.output_name, &[None, Some(classes)]));
    let mut m = ModelProto::new();
    m.ir_version = 8;
    m.producer_name = "fineprune".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    m.opset_import.push(Default::default());
    m.opset_import.last_mut().expect("just pushed").version = g.nodes.iter().map(|n| opset_for(&n.op)).max().unwrap_or(OPSET);
    *m.graph.mut_or_insert_default() = graph;
    m.write_to_bytes().map_err(|e| Error::model(format!("encoding ONNX: {e}")))
}
