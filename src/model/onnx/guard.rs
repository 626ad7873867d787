//! Checks an ONNX file from someone we do not trust *before* any library builds anything from
//! it: every tensor's size against the limits, external-data paths kept inside the model's
//! folder (and the data inlined, so nothing later reads another file), no dangling inputs, no
//! cycles, no operator outside what the importer understands, and finite weights. What passes
//! is re-ordered topologically, which ONNX requires and some exporters forget.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use onnx_ir::{GraphProto, ModelProto, NodeProto, TensorProto};

use super::OnnxLimits;
use crate::error::{Error, Result};

/// The operators the importer turns into the graph IR (default ONNX domain). Shape, Gather,
/// Unsqueeze, Concat, Cast, Range, Constant chains are allowed because exporters use them to
/// compute constant shapes and, from the batch size, a strided gather's indices; the importer
/// refuses any that do not fold away or evaluate.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Clip",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "BatchNormalization",
    "LayerNormalization",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Split",
    "Slice",
    "Div",
    "Sub",
    "Dropout",
    "Identity",
    "Softmax",
    "Constant",
    "Shape",
    "Gather",
    "Cast",
    "Transpose",
    "Expand",
    "Range",
];

/// Most nodes we accept in one graph: far above any CNN, a bound on the work a file can ask for.
const MAX_NODES: usize = 100_000;

/// Bytes per element for the ONNX tensor types we can read, by `TensorProto.data_type`.
fn element_size(data_type: i32) -> Option<usize> {
    Some(match data_type {
        1 | 6 | 12 => 4,  // float, int32, uint32
        2 | 3 | 9 => 1,   // uint8, int8, bool
        4 | 5 | 10 | 16 => 2, // uint16, int16, float16, bfloat16
        7 | 11 | 13 => 8, // int64, double, uint64
        _ => return None,
    })
}

fn type_name(data_type: i32) -> String {
    match data_type {
        8 => "string".into(),
        14 | 15 => "complex".into(),
        t => format!("type {t}"),
    }
}

/// Running totals over all tensors of a file.
struct Budget<'a> {
    limits: &'a OnnxLimits,
    total_bytes: u64,
    dir: Option<&'a Path>,
}

impl Budget<'_> {
    /// Checks one tensor (an initializer or a Constant's value): dims, size, stored length,
    /// external data (inlined here), finiteness.
    fn tensor(&mut self, t: &mut TensorProto, what: &str) -> Result<()> {
        let size = element_size(t.data_type).ok_or_else(|| Error::model(format!("{what}: tensors of {} are not supported", type_name(t.data_type))))?;
        let mut numel: usize = 1;
        for &d in &t.dims {
            if d < 0 {
                return Err(Error::model(format!("{what}: negative dimension {d} in {:?}", t.dims)));
            }
            numel = numel
                .checked_mul(d as usize)
                .filter(|&n| n <= self.limits.max_tensor_elements)
                .ok_or_else(|| Error::model(format!("{what}: dims {:?} exceed the limit of {} elements per tensor (see --max-tensor-elements)", t.dims, self.limits.max_tensor_elements)))?;
        }
        // No layer has an empty weight, and onnx-ir's constant folding indexes one unchecked
        // (an empty constant broadcast against a scalar).
        if numel == 0 && matches!(t.data_type, 1 | 10 | 11 | 16) {
            return Err(Error::model(format!("{what}: a float tensor with no elements (dims {:?})", t.dims)));
        }
        let bytes = (numel * size) as u64;
        self.total_bytes += bytes;
        if self.total_bytes > self.limits.max_total_bytes {
            return Err(Error::model(format!("{what}: the model's tensors exceed the limit of {} bytes in all (see --max-model-bytes)", self.limits.max_total_bytes)));
        }
        if t.data_location.value() == 1 {
            self.inline_external(t, what, bytes)?;
        }
        let stored = if !t.raw_data.is_empty() {
            if t.raw_data.len() as u64 != bytes {
                return Err(Error::model(format!("{what}: {} bytes of data for dims {:?} ({bytes} bytes expected)", t.raw_data.len(), t.dims)));
            }
            numel
        } else {
            match t.data_type {
                1 => t.float_data.len(),
                7 => t.int64_data.len(),
                11 => t.double_data.len(),
                12 | 13 => t.uint64_data.len(),
                _ => t.int32_data.len(),
            }
        };
        if stored != numel {
            return Err(Error::model(format!("{what}: {stored} values stored for dims {:?} ({numel} expected)", t.dims)));
        }
        if !self.limits.allow_non_finite {
            check_finite(t, what)?;
        }
        Ok(())
    }

    /// Reads a tensor's external data into the tensor itself, refusing any location that is
    /// absolute, climbs out of the model's folder (also through a symlink), or does not hold
    /// exactly the bytes the dims need.
    fn inline_external(&mut self, t: &mut TensorProto, what: &str, bytes: u64) -> Result<()> {
        let entry = |key: &str| t.external_data.iter().find(|e| e.key == key).map(|e| e.value.clone());
        let location = entry("location").ok_or_else(|| Error::model(format!("{what}: external data without a location")))?;
        let offset: u64 = entry("offset").map(|v| v.parse()).transpose().map_err(|_| Error::model(format!("{what}: external data offset is not a number")))?.unwrap_or(0);
        let length: Option<u64> = entry("length").map(|v| v.parse()).transpose().map_err(|_| Error::model(format!("{what}: external data length is not a number")))?;
        let rel = Path::new(&location);
        let escapes = location.is_empty()
            || location.contains('\0')
            || location.contains('\\')
            || rel.is_absolute()
            || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(Error::model(format!("{what}: external data location {location:?} is absolute or leaves the model's folder; refused")));
        }
        let dir = self.dir.ok_or_else(|| Error::model(format!("{what}: external data {location:?} but the model was not read from a folder")))?;
        let canon_dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let path = dir.join(rel);
        let canon = path.canonicalize().map_err(|e| Error::io(&path, e))?;
        if !canon.starts_with(&canon_dir) {
            return Err(Error::model(format!("{what}: external data {location:?} resolves outside the model's folder (symlink?); refused")));
        }
        let mut f = std::fs::File::open(&canon).map_err(|e| Error::io(&path, e))?;
        let file_len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        let length = length.unwrap_or(file_len.saturating_sub(offset));
        if length != bytes || offset.checked_add(length).is_none_or(|end| end > file_len) {
            return Err(Error::format(&path, format!("{what}: external data range {offset}+{length} does not hold the {bytes} bytes the dims need (file has {file_len})")));
        }
        let mut buf = vec![0u8; bytes as usize];
        f.seek(SeekFrom::Start(offset)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| Error::io(&path, e))?;
        t.raw_data = buf.into();
        t.external_data.clear();
        t.data_location = Default::default();
        Ok(())
    }
}

fn check_finite(t: &TensorProto, what: &str) -> Result<()> {
    let bad = |i: usize, v: f64| Error::model(format!("{what}: non-finite weight {v} at index {i} (use --allow-non-finite to load it anyway)"));
    match t.data_type {
        1 if !t.raw_data.is_empty() => {
            for (i, c) in t.raw_data.chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if !v.is_finite() {
                    return Err(bad(i, v as f64));
                }
            }
        }
        1 => {
            if let Some((i, v)) = t.float_data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(bad(i, *v as f64));
            }
        }
        11 if !t.raw_data.is_empty() => {
            for (i, c) in t.raw_data.chunks_exact(8).enumerate() {
                let v = f64::from_le_bytes(c.try_into().expect("8 bytes"));
                if !v.is_finite() {
                    return Err(bad(i, v));
                }
            }
        }
        11 => {
            if let Some((i, v)) = t.double_data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(bad(i, *v));
            }
        }
        _ => {}
    }
    Ok(())
}

/// What the graph alone says about its values' shapes (see [`known_shapes`]).
struct KnownShapes<'a> {
    /// Ranks: from the inputs' declared shapes, constant reshape targets, and the operators
    /// that keep or set the rank.
    rank: HashMap<&'a str, usize>,
    /// Exact dimensions: the inputs' declared ones and the constants', through element-wise
    /// operators, reshapes to a constant target and expansions to one. What a Squeeze without
    /// axes leaves depends on them (onnx-ir knows them too, and a Split of the result then
    /// reaches its unchecked indexing), and so does onnx-ir's folding of constant arithmetic.
    dims: HashMap<&'a str, Vec<i64>>,
    /// The graph's constant tensors ([`constants`]).
    constants: HashMap<&'a str, &'a TensorProto>,
    /// The values computed from the graph's input ([`feature_values`]).
    features: HashSet<&'a str>,
}

/// The ranks and dimensions that follow from the graph alone; values of any other operator
/// are left out. Nodes must be in topological order.
fn known_shapes(graph: &GraphProto, opset: i64) -> KnownShapes<'_> {
    let mut rank: HashMap<&str, usize> = HashMap::new();
    let mut dims: HashMap<&str, Vec<i64>> = HashMap::new();
    for v in &graph.input {
        if let Some(shape) = v.type_.as_ref().and_then(|t| t.tensor_type().shape.as_ref()) {
            rank.insert(v.name.as_str(), shape.dim.len());
            let d: Vec<i64> = shape.dim.iter().map(|d| d.dim_value()).collect();
            if d.iter().all(|&v| v > 0) {
                dims.insert(v.name.as_str(), d);
            }
        }
    }
    let initializers = constants(graph);
    dims.extend(initializers.iter().map(|(&name, t)| (name, t.dims.clone())));
    let init_dims = |x: &str| initializers.get(x).map(|t| t.dims.as_slice());
    // Operators that keep their input's dimensions, and the others that keep its rank.
    const ELEMENTWISE: &[&str] = &["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Neg", "Sqrt", "Softmax", "Dropout", "Identity", "Cast"];
    const SAME_RANK: &[&str] = &["Conv", "BatchNormalization", "LayerNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "Slice", "Split", "Concat", "Transpose"];
    // Squeeze's and Unsqueeze's axes: an attribute (opset < 13) or a constant second input.
    let axes = |n: &NodeProto| -> Option<usize> {
        match n.attribute.iter().find(|a| a.name == "axes") {
            Some(a) => Some(a.ints.len()),
            None => n.input.get(1).and_then(|x| initializers.get(x.as_str())).map(|t| int64_values(t).len()),
        }
    };
    for n in &graph.node {
        let first = n.input.first().and_then(|x| rank.get(x.as_str()).copied());
        let r = match n.op_type.as_str() {
            op if ELEMENTWISE.contains(&op) || SAME_RANK.contains(&op) => first,
            "Flatten" | "Gemm" => Some(2),
            "Reshape" => n.input.get(1).and_then(|s| init_dims(s)).and_then(|d| d.first()).and_then(|&len| usize::try_from(len).ok()),
            "Gather" => n.input.get(1).and_then(|i| init_dims(i)).and_then(|d| first.map(|r| (r + d.len()).saturating_sub(1))),
            "Shape" | "Range" => Some(1),
            "Squeeze" => match axes(n) {
                Some(k) => first.map(|r| r.saturating_sub(k)),
                None => n.input.first().and_then(|x| dims.get(x.as_str())).map(|d| d.iter().filter(|&&v| v != 1).count()),
            },
            "Unsqueeze" => axes(n).and_then(|k| first.map(|r| r + k)),
            // Reductions keep the rank (keepdims, the default) or drop the reduced axes (all of
            // them without axes).
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => match n.attribute.iter().find(|a| a.name == "keepdims").map_or(1, |a| a.i) {
                0 => first.and_then(|r| axes(n).map_or(Some(0), |k| r.checked_sub(k))),
                _ => first,
            },
            // NumPy's matmul: a vector operand loses its dimension; a scalar is no operand.
            "MatMul" => match (first, n.input.get(1).and_then(|x| rank.get(x.as_str()).copied().or_else(|| init_dims(x).map(|d| d.len())))) {
                (Some(a), Some(b)) if a >= 1 && b >= 1 => Some(match (a, b) {
                    (1, 1) => 0,
                    (1, b) => b - 1,
                    (a, 1) => a - 1,
                    (a, b) => a.max(b),
                }),
                _ => None,
            },
            // Broadcasting: the larger rank, when every input's is known.
            "Add" | "Sub" | "Mul" | "Div" => {
                n.input.iter().map(|x| rank.get(x.as_str()).copied().or_else(|| init_dims(x).map(|d| d.len()))).collect::<Option<Vec<usize>>>().and_then(|r| r.into_iter().max())
            }
            _ => None,
        };
        if let Some(r) = r {
            for o in &n.output {
                rank.insert(o.as_str(), r);
            }
        }
        let input_dims = n.input.first().and_then(|x| dims.get(x.as_str()));
        let out_dims = match n.op_type.as_str() {
            op if ELEMENTWISE.contains(&op) => input_dims.cloned(),
            "Reshape" => n.input.get(1).and_then(|s| initializers.get(s.as_str())).and_then(|t| reshaped(input_dims.map(Vec::as_slice), &int64_values(t))),
            "Expand" => n.input.get(1).and_then(|s| initializers.get(s.as_str())).zip(input_dims).and_then(|(t, d)| broadcast(d, &int64_values(t))),
            // A shape is a vector of the input's rank, or of the part `start..end` takes.
            "Shape" => first.map(|r| {
                let (start, end) = shape_range(n, opset, r as i64);
                vec![(end - start).max(0)]
            }),
            _ => None,
        };
        if let (Some(d), Some(o)) = (out_dims, n.output.first()) {
            rank.entry(o.as_str()).or_insert(d.len());
            dims.insert(o.as_str(), d);
        }
    }
    KnownShapes { rank, dims, constants: initializers, features: feature_values(graph) }
}

/// The graph's constant tensors by name: its initializers and the outputs of its Constant
/// nodes (how TensorFlow's converter and newer PyTorch exports write shapes and axes).
pub(super) fn constants(graph: &GraphProto) -> HashMap<&str, &TensorProto> {
    let nodes = graph.node.iter().filter(|n| n.op_type == "Constant").filter_map(|n| Some((n.output.first()?.as_str(), n.attribute.iter().find(|a| a.name == "value")?.t.as_ref()?)));
    graph.initializer.iter().map(|t| (t.name.as_str(), t)).chain(nodes).collect()
}

/// The dimensions a Reshape to the constant `target` gives, when they follow from it (and
/// from the input's dimensions, where the target copies one with 0 or infers one with -1).
fn reshaped(input: Option<&[i64]>, target: &[i64]) -> Option<Vec<i64>> {
    let mut out = Vec::with_capacity(target.len());
    for (i, &t) in target.iter().enumerate() {
        out.push(match t {
            1.. => t,
            0 => *input?.get(i)?,
            _ => -1,
        });
    }
    match out.iter().filter(|&&d| d == -1).count() {
        0 => Some(out),
        1 => {
            let total = input?.iter().try_fold(1i64, |a, &d| a.checked_mul(d))?;
            let rest = out.iter().filter(|&&d| d != -1).try_fold(1i64, |a, &d| a.checked_mul(d))?;
            let inferred = (rest > 0 && total % rest == 0).then(|| total / rest)?;
            out.iter_mut().filter(|d| **d == -1).for_each(|d| *d = inferred);
            Some(out)
        }
        _ => None,
    }
}

/// A Squeeze without axes removes every dimension of size 1, so the rank it leaves depends on
/// the dimensions; where the graph does not fix them, the rank of everything after it is
/// unknown and operators that index by rank (Split) cannot be checked: refused.
fn check_squeezes(graph: &GraphProto, known: &KnownShapes) -> Result<()> {
    for (i, n) in graph.node.iter().enumerate().filter(|(_, n)| n.op_type == "Squeeze") {
        let has_axes = n.attribute.iter().any(|a| a.name == "axes") || n.input.get(1).is_some_and(|x| !x.is_empty());
        if !has_axes && n.input.first().is_none_or(|x| !known.dims.contains_key(x.as_str())) {
            return Err(Error::model(format!("node {}: Squeeze without axes of a value whose dimensions the graph does not fix (the rank it leaves is unknown)", node_label(n, i))));
        }
    }
    Ok(())
}

/// A Split the importer could take: on the channel axis (1, the only one it supports) of a
/// value computed in the graph, not of a weight or a shape. onnx-ir 0.22 indexes the input's
/// static shape with the axis unchecked (node/split.rs), so any other axis, an input of rank
/// 1, or one whose rank the graph does not fix, is refused here, before it gets there.
fn check_splits(graph: &GraphProto, known: &KnownShapes) -> Result<()> {
    let KnownShapes { rank: ranks, constants: initializers, features, .. } = known;
    for (i, n) in graph.node.iter().enumerate().filter(|(_, n)| n.op_type == "Split") {
        let axis = n.attribute.iter().find(|a| a.name == "axis").map_or(0, |a| a.i);
        if axis != 1 {
            return Err(Error::model(format!("node {}: Split on axis {axis} (only the channel axis 1 is supported)", node_label(n, i))));
        }
        if let Some(x) = n.input.first().filter(|x| !features.contains(x.as_str())) {
            return Err(Error::model(format!("node {}: Split of {x:?}, a weight or a shape (only feature maps computed from the input can be split)", node_label(n, i))));
        }
        match n.input.first().and_then(|x| ranks.get(x.as_str())) {
            Some(&r) if r < 2 => return Err(Error::model(format!("node {}: Split on axis 1 of a value of rank {r}", node_label(n, i)))),
            Some(_) => {}
            // onnx-ir would index whatever rank it infers; unchecked here, it is refused.
            None => return Err(Error::model(format!("node {}: Split of a value whose rank the graph does not fix", node_label(n, i)))),
        }
        // onnx-ir casts the sizes to usize unchecked: -1 becomes a dimension of 2^64 - 1.
        let sizes: Vec<i64> = match n.input.get(1).and_then(|s| initializers.get(s.as_str())) {
            Some(t) => int64_values(t),
            None => n.attribute.iter().find(|a| a.name == "split").map(|a| a.ints.clone()).unwrap_or_default(),
        };
        if sizes.iter().any(|&v| v < 0) {
            return Err(Error::model(format!("node {}: Split into sizes {sizes:?}", node_label(n, i))));
        }
    }
    Ok(())
}

/// Arithmetic on two constants whose shapes differ (other than by a single element) is
/// refused: onnx-ir 0.22 folds two constants of equal element counts element by element and
/// then gives the result the broadcast shape ([2, 1, 1] * [1, 1, 2]: 2 values for a [2, 1, 2]
/// tensor), which fails an assertion inside it. The shapes are those [`known_shapes`] follows
/// (constants, expansions and reshapes of them); the importer has no use for such a product.
fn check_constant_arithmetic(graph: &GraphProto, known: &KnownShapes) -> Result<()> {
    for (i, n) in graph.node.iter().enumerate() {
        if !matches!(n.op_type.as_str(), "Add" | "Sub" | "Mul" | "Div") || n.input.iter().any(|x| known.features.contains(x.as_str())) {
            continue;
        }
        let shape_of = |k: usize| n.input.get(k).and_then(|x| known.dims.get(x.as_str()));
        if let (Some(a), Some(b)) = (shape_of(0), shape_of(1)) {
            let single = |d: &[i64]| d.iter().all(|&v| v == 1);
            if a != b && !single(a) && !single(b) {
                return Err(Error::model(format!("node {}: {} of two constants of shapes {a:?} and {b:?} (constant arithmetic that broadcasts is not supported)", node_label(n, i), n.op_type)));
            }
        }
    }
    Ok(())
}

/// The NumPy broadcast of two shapes, if they broadcast.
fn broadcast(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let n = a.len().max(b.len());
    let at = |d: &[i64], k: usize| if k + d.len() >= n { d[k + d.len() - n] } else { 1 };
    (0..n)
        .map(|k| match (at(a, k), at(b, k)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

/// The values of an integer tensor (int64 or int32, stored in their fields or little-endian
/// `raw_data`); empty for any other type.
pub(super) fn int64_values(t: &TensorProto) -> Vec<i64> {
    match (t.data_type, t.raw_data.is_empty()) {
        (7, true) => t.int64_data.clone(),
        (7, false) => t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        (6, true) => t.int32_data.iter().map(|&v| v as i64).collect(),
        (6, false) => t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect(),
        _ => vec![],
    }
}

/// The values computed from the model's input other than through its shape (`Shape`, and what
/// is computed from shapes and constants alone). Nodes must be in topological order.
fn feature_values(graph: &GraphProto) -> HashSet<&str> {
    let weights: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut set: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).filter(|v| !weights.contains(v)).collect();
    for n in &graph.node {
        if !matches!(n.op_type.as_str(), "Shape" | "Size" | "ConstantOfShape") && n.input.iter().any(|x| set.contains(x.as_str())) {
            set.extend(n.output.iter().map(String::as_str));
        }
    }
    set
}

fn node_label(n: &NodeProto, i: usize) -> String {
    if n.name.is_empty() { format!("#{i} ({})", n.op_type) } else { format!("{:?} ({})", n.name, n.op_type) }
}

/// Checks `model` in place (inlining external data from `dir`, re-ordering nodes
/// topologically). Errors say what is wrong and where; the caller adds the file name.
pub fn check(model: &mut ModelProto, dir: Option<&Path>, limits: &OnnxLimits) -> Result<()> {
    let opset = default_opset(model);
    if !model.functions.is_empty() {
        let names: Vec<&str> = model.functions.iter().map(|f| f.name.as_str()).collect();
        return Err(Error::model(format!("model-local functions are not supported: {}", names.join(", "))));
    }
    let graph: &mut GraphProto = model.graph.as_mut().ok_or_else(|| Error::model("not an ONNX model: it has no graph"))?;
    if graph.node.is_empty() {
        return Err(Error::model("not an ONNX model: the graph has no nodes"));
    }
    if graph.node.len() > MAX_NODES {
        return Err(Error::model(format!("{} nodes, more than the {MAX_NODES} we accept", graph.node.len())));
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(Error::model("sparse initializers are not supported"));
    }
    // Operators first: one message that lists everything unsupported.
    let unsupported: Vec<String> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| !(matches!(n.domain.as_str(), "" | "ai.onnx") && SUPPORTED_OPS.contains(&n.op_type.as_str())))
        .map(|(i, n)| if n.domain.is_empty() { node_label(n, i) } else { format!("{} in domain {:?}", node_label(n, i), n.domain) })
        .collect();
    if !unsupported.is_empty() {
        return Err(Error::model(format!("unsupported operators: {}", unsupported.join(", "))));
    }
    let mut budget = Budget { limits, total_bytes: 0, dir };
    let mut defined: HashSet<String> = HashSet::new();
    for t in graph.initializer.iter_mut() {
        let what = format!("initializer {:?}", t.name);
        budget.tensor(t, &what)?;
        if !defined.insert(t.name.clone()) {
            return Err(Error::model(format!("{what} is defined twice")));
        }
    }
    for (i, n) in graph.node.iter_mut().enumerate() {
        let label = node_label(n, i);
        for a in n.attribute.iter_mut() {
            if a.g.is_some() || !a.graphs.is_empty() {
                return Err(Error::model(format!("node {label}: subgraph attributes are not supported")));
            }
            if let Some(t) = a.t.as_mut() {
                budget.tensor(t, &format!("node {label} attribute {:?}", a.name))?;
            }
            for t in a.tensors.iter_mut() {
                budget.tensor(t, &format!("node {label} attribute {:?}", a.name))?;
            }
        }
    }
    for input in &graph.input {
        defined.insert(input.name.clone());
    }
    // Producers, then dangling inputs and cycles.
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains(o) || producer.insert(o.as_str(), i).is_some() {
                return Err(Error::model(format!("value {o:?} is produced more than once (node {})", node_label(n, i))));
            }
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(graph.node.len());
    for (i, n) in graph.node.iter().enumerate() {
        let mut d = Vec::new();
        for name in n.input.iter().filter(|s| !s.is_empty()) {
            match producer.get(name.as_str()) {
                Some(&p) => d.push(p),
                None if defined.contains(name) => {}
                None => return Err(Error::model(format!("node {} reads {name:?}, which no node, input or initializer defines", node_label(n, i)))),
            }
        }
        deps.push(d);
    }
    for o in &graph.output {
        if !producer.contains_key(o.name.as_str()) && !defined.contains(&o.name) {
            return Err(Error::model(format!("graph output {:?} is not produced by any node", o.name)));
        }
    }
    let order = topological_order(&deps).map_err(|stuck| {
        let names: Vec<String> = stuck.iter().take(5).map(|&i| node_label(&graph.node[i], i)).collect();
        Error::model(format!("the graph has a cycle through {}", names.join(", ")))
    })?;
    if order.iter().enumerate().any(|(k, &i)| k != i) {
        let mut nodes: Vec<Option<NodeProto>> = std::mem::take(&mut graph.node).into_iter().map(Some).collect();
        graph.node = order.iter().map(|&i| nodes[i].take().expect("each once")).collect();
    }
    let known = known_shapes(graph, opset);
    check_squeezes(graph, &known)?;
    check_splits(graph, &known)?;
    check_ranges(graph, &known)?;
    check_constant_arithmetic(graph, &known)
}

/// The version of the default ONNX operator set the model declares (0 if none).
pub(super) fn default_opset(model: &ModelProto) -> i64 {
    model.opset_import.iter().filter(|o| matches!(o.domain.as_str(), "" | "ai.onnx")).map(|o| o.version).max().unwrap_or(0)
}

/// Shape's `start` and `end` attributes exist from opset 15; before, a shape is the whole one
/// (onnx-ir and onnxruntime ignore them there).
pub(super) fn shape_range(n: &NodeProto, opset: i64, rank: i64) -> (i64, i64) {
    let at = |name: &str, default: i64| {
        let v = n.attribute.iter().find(|a| a.name == name && opset >= 15).map_or(default, |a| a.i);
        (if v < 0 { v.saturating_add(rank) } else { v }).clamp(0, rank)
    };
    (at("start", 0), at("end", rank))
}

/// Range takes scalars: constants, or values the graph fixes at rank 0 (a shape's element,
/// squeezed). onnx-ir 0.22 reads the element type of every input and panics on a shape
/// vector, so anything else is refused here.
fn check_ranges(graph: &GraphProto, known: &KnownShapes) -> Result<()> {
    for (i, n) in graph.node.iter().enumerate().filter(|(_, n)| n.op_type == "Range") {
        if let Some(x) = n.input.iter().find(|x| !known.constants.contains_key(x.as_str()) && known.rank.get(x.as_str()) != Some(&0)) {
            return Err(Error::model(format!("node {}: Range of {x:?}, which is not a scalar (a constant, or a shape element squeezed to one)", node_label(n, i))));
        }
    }
    Ok(())
}

/// Kahn's algorithm, stable (keeps the file's order where it is valid). On a cycle, returns
/// the nodes that could not be ordered.
fn topological_order(deps: &[Vec<usize>]) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut pending: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            readers[p].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in &readers[i] {
            pending[r] -= 1;
            if pending[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if order.len() == n { Ok(order) } else { Err((0..n).filter(|&i| pending[i] > 0).collect()) }
}

#[cfg(test)]
mod tests {
    use super::{broadcast, check_squeezes, known_shapes, reshaped, topological_order};
    use onnx_ir::{GraphProto, NodeProto};

    fn squeeze_of_input(dims: &[Option<i64>]) -> GraphProto {
        let mut g = GraphProto::new();
        g.input.push(crate::model::onnx::export::value_info("x", dims));
        let mut n = NodeProto::new();
        n.op_type = "Squeeze".into();
        n.input = vec!["x".into()];
        n.output = vec!["y".into()];
        g.node.push(n);
        g
    }

    #[test]
    fn a_squeeze_without_axes_needs_dimensions_the_graph_fixes() {
        let fixed = squeeze_of_input(&[Some(1), Some(8), Some(1), Some(1)]);
        let known = known_shapes(&fixed, 18);
        assert_eq!(known.rank.get("y"), Some(&1));
        check_squeezes(&fixed, &known).unwrap();
        let open = squeeze_of_input(&[None, Some(8), Some(1), Some(1)]);
        let err = check_squeezes(&open, &known_shapes(&open, 18)).unwrap_err().to_string();
        assert!(err.contains("Squeeze without axes"), "{err}");
    }

    #[test]
    fn shapes_broadcast_as_numpy_does() {
        assert_eq!(broadcast(&[2, 1, 1], &[1, 1, 2]), Some(vec![2, 1, 2]));
        assert_eq!(broadcast(&[3, 4], &[4]), Some(vec![3, 4]));
        assert_eq!(broadcast(&[1], &[2, 3, 1]), Some(vec![2, 3, 1]));
        assert_eq!(broadcast(&[3], &[4]), None);
    }

    fn chain(ops: &[(&str, &[&str])]) -> GraphProto {
        let mut g = GraphProto::new();
        g.input.push(crate::model::onnx::export::value_info("x", &[None, Some(8), Some(4), Some(4)]));
        g.input.push(crate::model::onnx::export::value_info("v", &[Some(4)]));
        for (i, (op, inputs)) in ops.iter().enumerate() {
            let mut n = NodeProto::new();
            n.op_type = (*op).into();
            n.input = inputs.iter().map(|s| s.to_string()).collect();
            n.output = vec![format!("y{i}")];
            g.node.push(n);
        }
        g
    }

    #[test]
    fn ranks_follow_matmul_and_reductions() {
        let g = chain(&[("MatMul", &["x", "x"]), ("MatMul", &["x", "v"]), ("ReduceMean", &["x"]), ("MatMul", &["v", "v"])]);
        let known = known_shapes(&g, 18);
        assert_eq!([0, 1, 2, 3].map(|i| known.rank.get(format!("y{i}").as_str()).copied()), [Some(4), Some(3), Some(4), Some(0)]);
        let scalar = chain(&[("MatMul", &["y9", "x"])]);
        assert_eq!(known_shapes(&scalar, 18).rank.get("y0"), None, "an operand of unknown rank leaves the product's unknown");
    }

    #[test]
    fn reshape_targets_fix_dimensions_where_they_can() {
        assert_eq!(reshaped(None, &[1, 363, 1, 1]), Some(vec![1, 363, 1, 1]));
        assert_eq!(reshaped(Some(&[2, 3, 4]), &[0, -1]), Some(vec![2, 12]));
        assert_eq!(reshaped(None, &[0, 4]), None, "0 copies an unknown dimension");
        assert_eq!(reshaped(Some(&[2, 3, 4]), &[5, -1]), None, "24 is not a multiple of 5");
        assert_eq!(reshaped(Some(&[2, 3]), &[-1, -1]), None);
        assert_eq!(reshaped(Some(&[i64::MAX, 4]), &[-1]), None, "overflow");
    }

    #[test]
    fn orders_and_finds_cycles() {
        assert_eq!(topological_order(&[vec![1], vec![], vec![0, 1]]), Ok(vec![1, 0, 2]));
        assert_eq!(topological_order(&[vec![2], vec![0], vec![1], vec![]]), Err(vec![0, 1, 2]));
    }
}
