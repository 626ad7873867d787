#![no_main]
//! Structure-aware ONNX: the fuzzer's bytes choose a graph of the operators exporters write
//! (and a few we refuse), with attributes and initializers that mostly fit the shapes flowing
//! through it and sometimes do not. Encoding it with the protobuf types gets every input past
//! the protobuf decoder, so the fuzzer spends its time in the guard, onnx-ir's shape logic, our
//! import and one forward pass, which the raw-bytes `onnx` target rarely reaches.
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use fineprune::model::onnx::export::{self, float, int, ints};
use onnx_ir::{AttributeProto, AttributeType, GraphProto, Message, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// What the generator knows about a value: its name and (believed) shape.
#[derive(Clone)]
struct Value {
    name: String,
    dims: Vec<i64>,
}

struct Gen<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    graph: GraphProto,
    values: Vec<Value>,
    fresh: usize,
}

fn string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec().into();
    a
}

/// A value info of `dims`, the first one symbolic if asked.
fn value_info(name: &str, dims: &[i64], symbolic_batch: bool) -> ValueInfoProto {
    let dims: Vec<Option<i64>> = dims.iter().enumerate().map(|(i, &d)| (i > 0 || !symbolic_batch).then_some(d)).collect();
    export::value_info(name, &dims)
}

const OTHER_OPS: &[&str] = &[
    "Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "Conv", "Dropout", "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul", "MaxPool", "Mul",
    "Relu", "Reshape", "Shape", "Sigmoid", "Softmax", "Squeeze", "Tanh", "Transpose", "Unsqueeze", "Sub", "Div", "Pad", "Clip", "ConvTranspose", "Resize", "Slice", "Split", "LSTM", "Loop",
    "HardSigmoid", "HardSwish", "Erf", "LayerNormalization", "ReduceMean", "Equal", "Where", "Expand", "ConstantOfShape", "Range",
];

const ATTR_NAMES: &[&str] =
    &["kernel_shape", "strides", "pads", "dilations", "group", "axis", "axes", "perm", "transA", "transB", "alpha", "beta", "epsilon", "momentum", "ceil_mode", "count_include_pad", "auto_pad", "to", "value", "allowzero", "training_mode", "storage_order", "keepdims", "split", "min", "max"];

impl<'a, 'b> Gen<'a, 'b> {
    fn name(&mut self, base: &str) -> String {
        self.fresh += 1;
        format!("{base}{}", self.fresh)
    }

    /// A small size, now and then an extreme one.
    fn size(&mut self, lo: i64, hi: i64) -> Result<i64> {
        Ok(match self.u.int_in_range(0..=31u8)? {
            0 => *self.u.choose(&[0, -1, -7, i64::MAX, i64::MIN, 1 << 31, 1 << 40])?,
            _ => self.u.int_in_range(lo..=hi)?,
        })
    }

    /// Mostly `good`; sometimes a neighbour or anything.
    fn perturb(&mut self, good: i64) -> Result<i64> {
        Ok(match self.u.int_in_range(0..=15u8)? {
            0 => good + 1,
            1 => good - 1,
            2 => self.size(0, 9)?,
            _ => good,
        })
    }

    fn floats(&mut self, n: usize) -> Result<Vec<f32>> {
        let palette: Vec<f32> = (0..self.u.int_in_range(1..=4usize)?)
            .map(|_| match self.u.int_in_range(0..=15u8) {
                Ok(0) => f32::NAN,
                Ok(1) => f32::INFINITY,
                Ok(2) => 1e30,
                _ => self.u.int_in_range(-100..=100i32).map(|v| v as f32 / 50.0).unwrap_or(0.5),
            })
            .collect();
        Ok((0..n).map(|i| palette[i % palette.len()]).collect())
    }

    /// An initializer of (roughly) these dims: float data of the matching length, or raw
    /// bytes, or a wrong length, or another element type.
    fn initializer(&mut self, base: &str, dims: Vec<i64>) -> Result<String> {
        let name = self.name(base);
        let mut t = TensorProto::new();
        t.name = name.clone();
        let dims: Vec<i64> = dims.into_iter().map(|d| self.perturb(d)).collect::<Result<_>>()?;
        let n = dims.iter().try_fold(1usize, |acc, &d| if (0..=4096).contains(&d) { acc.checked_mul(d as usize) } else { None }).unwrap_or(0).min(1 << 16);
        t.dims = dims;
        match self.u.int_in_range(0..=15u8)? {
            0 => {
                t.data_type = 1;
                t.raw_data = self.floats(n)?.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into();
            }
            1 => {
                t.data_type = 7;
                t.int64_data = (0..n).map(|i| i as i64 - 1).collect();
            }
            2 => {
                t.data_type = *self.u.choose(&[0, 2, 3, 6, 10, 11, 16, 99])?;
                let len = self.u.int_in_range(0..=64usize)?;
                t.raw_data = self.u.bytes(len)?.to_vec().into();
            }
            3 => {
                t.data_type = 1;
                let extra = self.u.int_in_range(0..=3usize)?;
                t.float_data = self.floats((n + extra).saturating_sub(1))?;
            }
            _ => {
                t.data_type = 1;
                t.float_data = self.floats(n)?;
            }
        }
        self.graph.initializer.push(t);
        Ok(name)
    }

    fn int64_initializer(&mut self, base: &str, values: Vec<i64>) -> String {
        let dims = vec![values.len() as i64];
        self.int64_tensor(base, values, dims)
    }

    fn int64_tensor(&mut self, base: &str, values: Vec<i64>, dims: Vec<i64>) -> String {
        let name = self.name(base);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.data_type = 7;
        t.dims = dims;
        t.int64_data = values;
        self.graph.initializer.push(t);
        name
    }

    /// A value to read: mostly the latest, sometimes an earlier one or a name nobody wrote.
    fn pick(&mut self) -> Result<Value> {
        Ok(match self.u.int_in_range(0..=31u8)? {
            0 => Value { name: "nowhere".into(), dims: vec![1, 1, 1, 1] },
            1..=6 => self.u.choose(&self.values)?.clone(),
            _ => self.values.last().expect("the input is a value").clone(),
        })
    }

    fn emit(&mut self, op: &str, inputs: Vec<String>, mut attrs: Vec<AttributeProto>, dims: Vec<i64>) -> Result<()> {
        // Now and then an extra attribute with a random name and value.
        if self.u.int_in_range(0..=15u8)? == 0 {
            let name = *self.u.choose(ATTR_NAMES)?;
            attrs.push(match self.u.int_in_range(0..=3u8)? {
                0 => int(name, self.size(0, 4)?),
                1 => {
                    let v: Vec<i64> = (0..self.u.int_in_range(0..=5usize)?).map(|_| self.size(-1, 4)).collect::<Result<_>>()?;
                    ints(name, &v)
                }
                2 => float(name, self.u.arbitrary()?),
                _ => string(name, *self.u.choose(&["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET", "x"])?),
            });
        }
        let out = self.name(&op.to_lowercase());
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("/{}/{op}", self.name("m"));
        n.input = inputs;
        n.output = vec![out.clone()];
        n.attribute = attrs;
        self.graph.node.push(n);
        self.values.push(Value { name: out, dims });
        Ok(())
    }

    fn step(&mut self) -> Result<()> {
        let x = self.pick()?;
        let map = x.dims.len() == 4;
        let (c, h, w) = if map { (x.dims[1], x.dims[2], x.dims[3]) } else { (x.dims.get(1).copied().unwrap_or(1), 1, 1) };
        let features: i64 = x.dims.iter().skip(1).product();
        match self.u.int_in_range(0..=31u8)? {
            0 | 1 => {
                let out = self.size(1, 6)?;
                let k = self.size(1, 3)?;
                let stride = self.size(1, 2)?;
                let pad = self.size(0, 1)?;
                let dil = self.size(1, 2)?;
                let groups = if self.u.ratio(1, 6)? { c } else { 1 };
                let per_group = if groups > 0 { c / groups } else { c };
                let wt = self.initializer("conv.weight", vec![out, per_group, k, k])?;
                let mut inputs = vec![x.name, wt];
                if self.u.arbitrary()? {
                    inputs.push(self.initializer("conv.bias", vec![out])?);
                }
                let attrs = vec![ints("kernel_shape", &[k, k]), ints("strides", &[stride, stride]), ints("pads", &[pad, pad, pad, pad]), ints("dilations", &[dil, dil]), int("group", groups)];
                let span = dil.saturating_mul(k.saturating_sub(1)) + 1;
                let o = |s: i64| if stride > 0 { (s + 2 * pad - span) / stride + 1 } else { s };
                self.emit("Conv", inputs, attrs, vec![1, out, o(h), o(w)])
            }
            2 => {
                let mut inputs = vec![x.name];
                for role in ["scale", "bias", "mean", "var"] {
                    inputs.push(self.initializer(role, vec![c])?);
                }
                let attrs = vec![float("epsilon", 1e-5), float("momentum", 0.9)];
                self.emit("BatchNormalization", inputs, attrs, x.dims)
            }
            3 | 4 => {
                let op = *self.u.choose(&["Relu", "Sigmoid", "Tanh", "Identity", "Dropout", "Softmax"])?;
                self.emit(op, vec![x.name], vec![], x.dims)
            }
            5 => {
                let alpha = self.u.arbitrary()?;
                self.emit("LeakyRelu", vec![x.name], vec![float("alpha", alpha)], x.dims)
            }
            6 | 7 => {
                let op = *self.u.choose(&["MaxPool", "AveragePool"])?;
                let k = self.size(1, 3)?;
                let stride = self.size(1, 2)?;
                let pad = self.size(0, 1)?;
                let mut attrs = vec![ints("kernel_shape", &[k, k]), ints("strides", &[stride, stride]), ints("pads", &[pad, pad, pad, pad])];
                if self.u.arbitrary()? {
                    attrs.push(int("ceil_mode", 1));
                }
                if self.u.arbitrary()? {
                    attrs.push(int("count_include_pad", 1));
                }
                let o = |s: i64| if stride > 0 { (s + 2 * pad - k) / stride + 1 } else { s };
                self.emit(op, vec![x.name], attrs, vec![1, c, o(h), o(w)])
            }
            8 => self.emit("GlobalAveragePool", vec![x.name], vec![], vec![1, c, 1, 1]),
            9 | 10 => {
                // Add or Mul with another value, a per-channel constant or a scalar.
                let op = *self.u.choose(&["Add", "Mul"])?;
                let other = match self.u.int_in_range(0..=2u8)? {
                    0 => self.pick()?.name,
                    1 => self.initializer("k", if map { vec![1, c, 1, 1] } else { vec![1, c] })?,
                    _ => self.initializer("k", vec![])?,
                };
                self.emit(op, vec![x.name, other], vec![], x.dims)
            }
            11 => {
                let y = self.pick()?;
                let cy = y.dims.get(1).copied().unwrap_or(1);
                let axis = self.perturb(1)?;
                self.emit("Concat", vec![x.name, y.name], vec![int("axis", axis)], vec![1, c + cy, h, w])
            }
            12 | 13 => {
                let axis = self.perturb(1)?;
                self.emit("Flatten", vec![x.name], vec![int("axis", axis)], vec![1, features])
            }
            14 => {
                let shape = match self.u.int_in_range(0..=3u8)? {
                    0 => vec![-1, features],
                    1 => vec![0, -1],
                    2 => vec![1, features],
                    _ => (0..self.u.int_in_range(0..=4usize)?).map(|_| self.size(-1, 8)).collect::<Result<_>>()?,
                };
                let s = self.int64_initializer("shape", shape);
                self.emit("Reshape", vec![x.name, s], vec![], vec![1, features])
            }
            15 | 16 => {
                let out = self.size(1, 10)?;
                let trans_b = self.u.arbitrary::<bool>()?;
                let wt = self.initializer("fc.weight", if trans_b { vec![out, features] } else { vec![features, out] })?;
                let mut inputs = vec![x.name, wt];
                let op = if self.u.ratio(1, 4)? { "MatMul" } else { "Gemm" };
                if op == "Gemm" && self.u.arbitrary()? {
                    inputs.push(self.initializer("fc.bias", vec![out])?);
                }
                let attrs = if op == "Gemm" && trans_b { vec![int("transB", 1)] } else { vec![] };
                self.emit(op, inputs, attrs, vec![1, out])
            }
            17 => {
                let perm = match self.u.int_in_range(0..=2u8)? {
                    0 => vec![0, 2, 3, 1],
                    1 => vec![0, 3, 1, 2],
                    _ => (0..self.u.int_in_range(0..=5usize)?).map(|_| self.size(0, 3)).collect::<Result<_>>()?,
                };
                let dims = perm.iter().map(|&p| x.dims.get(p as usize).copied().unwrap_or(1)).collect();
                self.emit("Transpose", vec![x.name], vec![ints("perm", &perm)], dims)
            }
            18 => {
                // The Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain of a
                // TorchScript flatten, which onnx-ir folds.
                let shape = self.shape_of(&x.name, vec![]);
                let at = self.perturb(0)?;
                let idx = self.int64_initializer("idx", vec![at]);
                self.emit("Gather", vec![shape, idx], vec![int("axis", 0)], vec![1])?;
                let g = self.values.last().expect("just emitted").name.clone();
                let axes = self.int64_initializer("axes", vec![0]);
                self.emit("Unsqueeze", vec![g, axes], vec![], vec![1])?;
                let un = self.values.last().expect("just emitted").name.clone();
                let minus = self.int64_initializer("minus1", vec![-1]);
                self.emit("Concat", vec![un, minus], vec![int("axis", 0)], vec![2])?;
                let cat = self.values.last().expect("just emitted").name.clone();
                self.emit("Reshape", vec![x.name, cat], vec![], vec![1, features])
            }
            19 => {
                let to = self.perturb(1)?;
                self.emit("Cast", vec![x.name], vec![int("to", to)], x.dims)
            }
            20 => {
                // ReLU6 and friends: Clip with scalar bounds as inputs (opset >= 11), sometimes
                // missing, inverted or not finite.
                let mut inputs = vec![x.name];
                for _ in 0..self.u.int_in_range(0..=2u8)? {
                    inputs.push(self.initializer("bound", vec![])?);
                }
                self.emit("Clip", inputs, vec![], x.dims)
            }
            21 => {
                let op = *self.u.choose(&["HardSigmoid", "HardSwish", "Erf", "Neg", "Sqrt"])?;
                let attrs = if op == "HardSigmoid" { vec![float("alpha", self.u.arbitrary()?), float("beta", self.u.arbitrary()?)] } else { vec![] };
                self.emit(op, vec![x.name], attrs, x.dims)
            }
            22 => {
                // SiLU and hard swish as exporters write them: x * Sigmoid(x), x * HardSigmoid(x).
                let gate = *self.u.choose(&["Sigmoid", "HardSigmoid"])?;
                let attrs = if gate == "HardSigmoid" && self.u.arbitrary()? { vec![float("alpha", 1.0 / 6.0), float("beta", 0.5)] } else { vec![] };
                self.emit(gate, vec![x.name.clone()], attrs, x.dims.clone())?;
                let g = self.values.last().expect("just emitted").name.clone();
                let inputs = if self.u.arbitrary()? { vec![x.name, g] } else { vec![g, x.name] };
                self.emit("Mul", inputs, vec![], x.dims)
            }
            23 => {
                // A squeeze-and-excitation gate: pool, a 1x1 conv, a sigmoid, times the map.
                self.emit("GlobalAveragePool", vec![x.name.clone()], vec![], vec![1, c, 1, 1])?;
                let pooled = self.values.last().expect("just emitted").name.clone();
                let out = self.perturb(c)?;
                let wt = self.initializer("se.weight", vec![out, c, 1, 1])?;
                self.emit("Conv", vec![pooled, wt], vec![ints("kernel_shape", &[1, 1])], vec![1, out, 1, 1])?;
                let squeezed = self.values.last().expect("just emitted").name.clone();
                self.emit("Sigmoid", vec![squeezed], vec![], vec![1, out, 1, 1])?;
                let gate = self.values.last().expect("just emitted").name.clone();
                self.emit("Mul", vec![x.name, gate], vec![], x.dims)
            }
            24 => {
                // Channel halves: Split with sizes (an input or an attribute) or Slice.
                let half = self.perturb(c / 2)?;
                let rest = self.perturb(c - c / 2)?;
                if self.u.arbitrary()? {
                    let axis = self.perturb(1)?;
                    let split = self.int64_initializer("split", vec![half, rest]);
                    let first = self.name("split");
                    let second = self.name("split");
                    let mut n = NodeProto::new();
                    n.op_type = "Split".into();
                    n.input = vec![x.name, split];
                    n.output = vec![first.clone(), second.clone()];
                    n.attribute = vec![int("axis", axis)];
                    self.graph.node.push(n);
                    self.values.push(Value { name: first, dims: vec![1, half, h, w] });
                    self.values.push(Value { name: second, dims: vec![1, rest, h, w] });
                    Ok(())
                } else {
                    let start = self.perturb(half)?;
                    let end = self.perturb(c)?;
                    let starts = self.int64_initializer("starts", vec![start]);
                    let ends = self.int64_initializer("ends", vec![end]);
                    let axis = self.perturb(1)?;
                    let axes = self.int64_initializer("axes", vec![axis]);
                    self.emit("Slice", vec![x.name, starts, ends, axes], vec![], vec![1, end.saturating_sub(start), h, w])
                }
            }
            25 => {
                // ShuffleNet's channel shuffle: [N, g, C/g, H, W], swap 1 and 2, back to maps.
                let groups = self.perturb(2)?;
                let per = if groups > 0 { c / groups } else { c };
                let view = self.int64_initializer("shape", vec![1, groups, per, h, w]);
                self.emit("Reshape", vec![x.name, view], vec![], vec![1, groups, per, h, w])?;
                let v = self.values.last().expect("just emitted").name.clone();
                let perm = if self.u.ratio(1, 4)? { vec![0, 2, 1, 4, 3] } else { vec![0, 2, 1, 3, 4] };
                self.emit("Transpose", vec![v], vec![ints("perm", &perm)], vec![1, per, groups, h, w])?;
                let t = self.values.last().expect("just emitted").name.clone();
                let channels = self.perturb(c)?;
                let back = self.int64_initializer("shape", vec![1, channels, h, w]);
                self.emit("Reshape", vec![t, back], vec![], x.dims)
            }
            26 => {
                // LayerNormalization over the last axis: on flat features, or on a
                // channels-last view of a map (ConvNeXt).
                let (input, dims, n) = if map && self.u.arbitrary()? {
                    self.emit("Transpose", vec![x.name], vec![ints("perm", &[0, 2, 3, 1])], vec![1, h, w, c])?;
                    let v = self.values.last().expect("just emitted").clone();
                    (v.name, v.dims, c)
                } else {
                    (x.name, x.dims.clone(), *x.dims.last().unwrap_or(&1))
                };
                let scale = self.initializer("ln.weight", vec![n])?;
                let bias = self.initializer("ln.bias", vec![n])?;
                let axis = self.perturb(-1)?;
                let eps = if self.u.ratio(1, 8)? { -1.0 } else { 1e-6 };
                self.emit("LayerNormalization", vec![input, scale, bias], vec![int("axis", axis), float("epsilon", eps)], dims)
            }
            27 => {
                // The dynamo exporter's adaptive pooling: ReduceMean over H and W (axes as an
                // input from opset 18, an attribute before).
                let keep = self.u.arbitrary::<bool>()?;
                let axes = vec![self.perturb(2)?, self.perturb(3)?];
                let dims = if keep { vec![1, c, 1, 1] } else { vec![1, c] };
                if self.u.arbitrary()? {
                    let a = self.int64_initializer("axes", axes);
                    self.emit("ReduceMean", vec![x.name, a], vec![int("keepdims", keep as i64)], dims)
                } else {
                    self.emit("ReduceMean", vec![x.name], vec![ints("axes", &axes), int("keepdims", keep as i64)], dims)
                }
            }
            28 | 29 => self.transformer(&x, c, h * w),
            30 => {
                // The dynamo exporter's as_strided (ConvNeXt's pooling): the whole batch
                // flattened, gathered back at indices computed from the batch size:
                // Range(0, batch) times the per-sample count, unsqueezed, plus offsets that
                // are mostly each sample's positions in order.
                let end = int("end", self.perturb(1)?);
                let shape = self.shape_of(&x.name, vec![end]);
                self.emit("Squeeze", vec![shape], vec![], vec![])?;
                let batch = self.last();
                let minus = self.perturb(-1)?;
                let minus = self.int64_initializer("minus1", vec![minus]);
                self.emit("Reshape", vec![x.name.clone(), minus], vec![], vec![features])?;
                let flat = self.last();
                let (start, step) = (self.perturb(0)?, self.perturb(1)?);
                let (start, step) = (self.int64_tensor("start", vec![start], vec![]), self.int64_tensor("step", vec![step], vec![]));
                self.emit("Range", vec![start, batch, step], vec![], vec![1])?;
                let range = self.last();
                let count = self.perturb(features)?;
                let count = self.int64_tensor("count", vec![count], vec![]);
                self.emit("Mul", vec![range, count], vec![], vec![1])?;
                let scaled = self.last();
                let rank = x.dims.len() as i64;
                let axes = self.int64_initializer("axes", (1..rank).collect());
                self.emit("Unsqueeze", vec![scaled, axes], vec![], vec![1; rank as usize])?;
                let batch_start = self.last();
                let n = features.clamp(0, 4096);
                let mut offsets: Vec<i64> = (0..n).collect();
                if n > 1 && self.u.ratio(1, 4)? {
                    let at = self.u.int_in_range(0..=n as usize - 1)?;
                    offsets[at] = self.size(0, n)?;
                }
                // One sample's offsets (a scalar value picked as x has no batch axis).
                let mut dims = x.dims.clone();
                if let Some(batch) = dims.first_mut() {
                    *batch = 1;
                }
                let offsets = self.int64_tensor("offsets", offsets, dims);
                self.emit("Add", vec![batch_start, offsets], vec![], x.dims.clone())?;
                let indices = self.last();
                let axis = self.perturb(0)?;
                self.emit("Gather", vec![flat, indices], vec![int("axis", axis)], x.dims)
            }
            _ => {
                // Anything: an operator with random inputs and attributes.
                let op = *self.u.choose(OTHER_OPS)?;
                let mut inputs = vec![x.name];
                for _ in 0..self.u.int_in_range(0..=2u8)? {
                    inputs.push(if self.u.arbitrary()? { self.pick()?.name } else { self.initializer("w", x.dims.clone())? });
                }
                self.emit(op, inputs, vec![], x.dims)
            }
        }
    }
}

impl Gen<'_, '_> {
    /// A Shape node of `x` (its output is a shape, not a value steps pick): its output's name.
    fn shape_of(&mut self, x: &str, attribute: Vec<AttributeProto>) -> String {
        let shape = self.name("shape");
        let mut n = NodeProto::new();
        n.op_type = "Shape".into();
        n.input = vec![x.to_string()];
        n.output = vec![shape.clone()];
        n.attribute = attribute;
        self.graph.node.push(n);
        shape
    }

    fn last(&self) -> String {
        self.values.last().expect("just emitted").name.clone()
    }

    /// A vision transformer's steps as PyTorch writes them: a map's positions as tokens
    /// (Reshape, Transpose), a class token (Expand, Concat), a position embedding, multi-head
    /// self-attention (packed in-projection, Reshape to [N, T, 3, heads, hd], Transpose, Gather,
    /// Q K^T, scale, Softmax, weights V, merge of the heads), then the class token or the map
    /// again. Every size and axis is mostly right and sometimes not.
    fn transformer(&mut self, x: &Value, c: i64, positions: i64) -> Result<()> {
        let (pc, pp) = (self.perturb(c)?, self.perturb(positions)?);
        let rows = self.int64_initializer("shape", vec![0, pc, pp]);
        self.emit("Reshape", vec![x.name.clone(), rows], vec![], vec![1, c, positions])?;
        let perm = if self.u.ratio(1, 8)? { vec![1, 0, 2] } else { vec![0, 2, 1] };
        self.emit("Transpose", vec![self.last()], vec![ints("perm", &perm)], vec![1, positions, c])?;
        let mut t = positions;
        if self.u.arbitrary()? {
            let pc = self.perturb(c)?;
            let token = self.initializer("class_token", vec![1, 1, pc])?;
            let shape = self.int64_initializer("shape", vec![1, 1, c]);
            self.emit("Expand", vec![token, shape], vec![], vec![1, 1, c])?;
            let expanded = self.last();
            let tokens = self.values[self.values.len() - 2].name.clone();
            let axis = self.perturb(1)?;
            self.emit("Concat", vec![expanded, tokens], vec![int("axis", axis)], vec![1, t + 1, c])?;
            t += 1;
        }
        if self.u.arbitrary()? {
            let pt = self.perturb(t)?;
            let table = self.initializer("pos_embedding", vec![1, pt, c])?;
            self.emit("Add", vec![self.last(), table], vec![], vec![1, t, c])?;
        }
        let residual = self.last();
        let heads = self.perturb(if c % 2 == 0 { 2 } else { 1 })?;
        let hd = if heads > 0 { c / heads } else { c };
        let out3 = self.perturb(3 * c)?;
        let w = self.initializer("in_proj", vec![c, out3])?;
        self.emit("MatMul", vec![residual.clone(), w], vec![], vec![1, t, 3 * c])?;
        let phd = self.perturb(hd)?;
        let split = self.int64_initializer("shape", vec![0, t, 3, heads, phd]);
        self.emit("Reshape", vec![self.last(), split], vec![], vec![1, t, 3, heads, hd])?;
        let perm = if self.u.ratio(1, 8)? { vec![0, 2, 1, 3, 4] } else { vec![2, 0, 3, 1, 4] };
        self.emit("Transpose", vec![self.last()], vec![ints("perm", &perm)], vec![3, 1, heads, t, hd])?;
        let packed = self.last();
        let mut qkv = Vec::new();
        for k in 0..3 {
            let pk = self.perturb(k)?;
            let index = self.int64_initializer("index", vec![pk]);
            // A 0-d index drops the axis, as exporters write it.
            if let Some(t) = self.graph.initializer.last_mut() {
                t.dims.clear();
            }
            let axis = self.perturb(0)?;
            self.emit("Gather", vec![packed.clone(), index], vec![int("axis", axis)], vec![1, heads, t, hd])?;
            qkv.push(self.last());
        }
        let key_perm = if self.u.ratio(1, 8)? { vec![0, 2, 1, 3] } else { vec![0, 1, 3, 2] };
        self.emit("Transpose", vec![qkv[1].clone()], vec![ints("perm", &key_perm)], vec![1, heads, hd, t])?;
        let (q, kt) = if self.u.ratio(1, 8)? { (self.last(), qkv[0].clone()) } else { (qkv[0].clone(), self.last()) };
        self.emit("MatMul", vec![q, kt], vec![], vec![1, heads, t, t])?;
        let scale = self.initializer("scale", vec![])?;
        self.emit("Mul", vec![self.last(), scale], vec![], vec![1, heads, t, t])?;
        let axis = self.perturb(-1)?;
        self.emit("Softmax", vec![self.last()], vec![int("axis", axis)], vec![1, heads, t, t])?;
        self.emit("MatMul", vec![self.last(), qkv[2].clone()], vec![], vec![1, heads, t, hd])?;
        let perm = if self.u.ratio(1, 8)? { vec![0, 1, 2, 3] } else { vec![0, 2, 1, 3] };
        self.emit("Transpose", vec![self.last()], vec![ints("perm", &perm)], vec![1, t, heads, hd])?;
        let pc = self.perturb(c)?;
        let merged = self.int64_initializer("shape", vec![0, t, pc]);
        self.emit("Reshape", vec![self.last(), merged], vec![], vec![1, t, c])?;
        if self.u.arbitrary()? {
            self.emit("Add", vec![self.last(), residual], vec![], vec![1, t, c])?;
        }
        if self.u.arbitrary()? {
            let p0 = self.perturb(0)?;
            let index = self.int64_initializer("index", vec![p0]);
            if let Some(t) = self.graph.initializer.last_mut() {
                t.dims.clear();
            }
            let axis = self.perturb(1)?;
            self.emit("Gather", vec![self.last(), index], vec![int("axis", axis)], vec![1, c])
        } else {
            self.emit("Transpose", vec![self.last()], vec![ints("perm", &[0, 2, 1])], vec![1, c, t])?;
            let pt = self.perturb(t)?;
            let back = self.int64_initializer("shape", vec![0, c, pt, 1]);
            self.emit("Reshape", vec![self.last(), back], vec![], vec![1, c, t, 1])
        }
    }
}

fn build(u: &mut Unstructured) -> Result<Vec<u8>> {
    let c = u.int_in_range(1..=4i64)?;
    let h = u.int_in_range(1..=12i64)?;
    let w = if u.ratio(1, 8)? { u.int_in_range(1..=12i64)? } else { h };
    let nhwc = u.ratio(1, 8)?;
    let input_dims = if nhwc { vec![1, h, w, c] } else { vec![1, c, h, w] };
    let mut g = Gen { u, graph: GraphProto::new(), values: vec![], fresh: 0 };
    g.graph.name = "fuzz".into();
    g.graph.input.push(value_info("input", &input_dims, g.u.arbitrary()?));
    g.values.push(Value { name: "input".into(), dims: vec![1, c, h, w] });
    if nhwc {
        g.emit("Transpose", vec!["input".into()], vec![ints("perm", &[0i64, 3, 1, 2])], vec![1, c, h, w])?;
    }
    for _ in 0..g.u.int_in_range(1..=10u8)? {
        g.step()?;
    }
    let last = g.values.last().expect("the input is a value").clone();
    let out_dims = last.dims.clone();
    // The output: the last value, or after a softmax.
    let mut graph = if g.u.ratio(1, 4)? {
        g.emit("Softmax", vec![last.name], vec![int("axis", 1)], out_dims.clone())?;
        let name = g.values.last().expect("just emitted").name.clone();
        let mut graph = g.graph;
        graph.output.push(value_info(&name, &out_dims, true));
        graph
    } else {
        let mut graph = g.graph;
        graph.output.push(value_info(&last.name, &out_dims, true));
        graph
    };
    if u.ratio(1, 16)? && !graph.node.is_empty() {
        // Out of order: the guard sorts nodes (or refuses a cycle).
        let i = u.choose_index(graph.node.len())?;
        let n = graph.node.remove(i);
        graph.node.push(n);
    }
    let mut m = ModelProto::new();
    m.ir_version = *u.choose(&[3, 7, 8, 9])?;
    m.opset_import.push(Default::default());
    m.opset_import.last_mut().expect("just pushed").version = *u.choose(&[7, 9, 11, 13, 13, 13, 16, 17, 18, 19, 21, 99])?;
    *m.graph.mut_or_insert_default() = std::mem::take(&mut graph);
    Ok(m.write_to_bytes().expect("encoding a model we built"))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(bytes) = build(&mut u) else { return };
    // To commit a finding as an ONNX file: run the input with FINEPRUNE_FUZZ_DUMP=path.onnx.
    if let Some(path) = std::env::var_os("FINEPRUNE_FUZZ_DUMP") {
        std::fs::write(path, &bytes).expect("writing the generated model");
    }
    let opts = fineprune::model::onnx::ImportOptions::default();
    match fineprune::model::onnx::import_bytes(&bytes, None, &opts, &fineprune_fuzz::device()) {
        Ok(file) => fineprune_fuzz::forward_once(&file),
        Err(e) => fineprune_fuzz::no_caught_panic(&e),
    }
});
