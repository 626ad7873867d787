//! Integer values an exporter computes from the batch size. PyTorch's dynamo exporter writes
//! `as_strided` (the adaptive pooling of ConvNeXt, among others) as a gather from the whole
//! batch flattened into one axis, at indices built from `Range(0, batch)`: onnx-ir cannot fold
//! them (they depend on the batch), so to know what such a gather does the importer evaluates
//! its index subgraph here, at given batch sizes, with every intermediate value bounded.

use std::collections::HashMap;

use onnx_ir::{GraphProto, NodeProto};

use super::guard::{constants, int64_values, shape_range};

/// An integer tensor: its dimensions and row-major values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ints {
    pub dims: Vec<usize>,
    pub values: Vec<i64>,
}

impl Ints {
    fn scalar(&self) -> Result<i64, String> {
        match self.values[..] {
            [v] => Ok(v),
            _ => Err(format!("a scalar expected, found dims {:?}", self.dims)),
        }
    }
}

type Eval = Result<Ints, String>;

fn ints(dims: Vec<usize>, values: Vec<i64>, max_elements: usize) -> Eval {
    if values.len() > max_elements {
        return Err(format!("{} elements (more than the {max_elements} this gather can need)", values.len()));
    }
    Ok(Ints { dims, values })
}

/// `value` of `graph` (operator set version `opset`) when the model's input `input` has batch
/// size `batch` (its other dimensions as declared). Only the integer operators exporters use for index arithmetic are
/// known; anything else, a value read from the input's data, or an intermediate of more than
/// `max_elements` elements is an error naming it. `graph`'s nodes are in topological order
/// (the guard sorts them).
pub fn evaluate(graph: &GraphProto, opset: i64, value: &str, input: &str, batch: i64, max_elements: usize) -> Eval {
    let producer: HashMap<&str, usize> = graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let consts = constants(graph);
    // The nodes `value` depends on, walked without recursion (a hostile chain may be long).
    let mut needed = vec![false; graph.node.len()];
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        if consts.contains_key(v) || v == input {
            continue;
        }
        let &i = producer.get(v).ok_or_else(|| format!("{v:?} has no producer"))?;
        if !needed[i] {
            needed[i] = true;
            stack.extend(graph.node[i].input.iter().map(String::as_str).filter(|s| !s.is_empty()));
        }
    }
    let mut known: HashMap<&str, Ints> = HashMap::new();
    for (n, _) in graph.node.iter().zip(&needed).filter(|(_, k)| **k) {
        let get = |k: usize| -> Eval {
            let name = n.input.get(k).filter(|s| !s.is_empty()).ok_or_else(|| format!("{} has no input {k}", n.op_type))?;
            if let Some(v) = known.get(name.as_str()) {
                return Ok(v.clone());
            }
            let t = consts.get(name.as_str()).ok_or_else(|| format!("{name:?} is read from the input's data, not computed from its shape"))?;
            let values = int64_values(t);
            let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
            if values.len() != dims.iter().product::<usize>() {
                return Err(format!("{name:?} is not an integer constant"));
            }
            ints(dims, values, max_elements)
        };
        let out = step(n, &get, graph, opset, input, batch, max_elements).map_err(|e| format!("{} {:?}: {e}", n.op_type, n.name))?;
        if let Some(o) = n.output.first() {
            known.insert(o.as_str(), out);
        }
    }
    known.remove(value).or_else(|| consts.get(value).map(|t| Ints { dims: t.dims.iter().map(|&d| d.max(0) as usize).collect(), values: int64_values(t) })).ok_or_else(|| format!("{value:?} is not an integer value"))
}

fn attr_ints<'a>(n: &'a NodeProto, name: &str) -> Option<&'a [i64]> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.ints.as_slice())
}

fn attr_int(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// An axis in `0..rank` from ONNX's signed form.
fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize).ok_or_else(|| format!("axis {a} of rank {rank}"))
}

fn step(n: &NodeProto, get: &dyn Fn(usize) -> Eval, graph: &GraphProto, opset: i64, input: &str, batch: i64, max: usize) -> Eval {
    // Squeeze's and Unsqueeze's axes: an attribute (opset < 13) or a second input.
    let axes = || -> Result<Option<Vec<i64>>, String> {
        match attr_ints(n, "axes") {
            Some(a) => Ok(Some(a.to_vec())),
            None if n.input.get(1).is_some_and(|x| !x.is_empty()) => Ok(Some(get(1)?.values)),
            None => Ok(None),
        }
    };
    match n.op_type.as_str() {
        "Identity" | "Cast" => {
            // Integers only: a cast to float would leave index arithmetic.
            if n.op_type == "Cast" && !matches!(attr_int(n, "to"), Some(6 | 7)) {
                return Err("a cast to a type other than int32 or int64".into());
            }
            get(0)
        }
        "Shape" => {
            if n.input.first().map(String::as_str) != Some(input) {
                return Err("the shape of a value other than the model's input".into());
            }
            let v = graph.input.iter().find(|v| v.name == input).ok_or("no input")?;
            let shape = v.type_.as_ref().and_then(|t| t.tensor_type().shape.as_ref()).ok_or("the input has no declared shape")?;
            let dims: Vec<i64> = shape.dim.iter().enumerate().map(|(k, d)| if k == 0 { batch } else { d.dim_value() }).collect();
            if dims[1..].iter().any(|&d| d <= 0) {
                return Err("the input's dimensions other than the batch are not fixed".into());
            }
            let (s, e) = shape_range(n, opset, dims.len() as i64);
            let v = dims[s as usize..e.max(s) as usize].to_vec();
            ints(vec![v.len()], v, max)
        }
        "Squeeze" => {
            let x = get(0)?;
            // Without axes, every dimension of 1 goes.
            let ax: Vec<usize> = match axes()? {
                Some(a) => a.iter().map(|&a| axis(a, x.dims.len())).collect::<Result<_, _>>()?,
                None => (0..x.dims.len()).filter(|&k| x.dims[k] == 1).collect(),
            };
            if ax.iter().any(|&a| x.dims[a] != 1) {
                return Err(format!("squeezes a dimension other than 1 of {:?}", x.dims));
            }
            let dims = x.dims.iter().enumerate().filter(|(k, _)| !ax.contains(k)).map(|(_, &d)| d).collect();
            Ok(Ints { dims, values: x.values })
        }
        "Unsqueeze" => {
            let (x, axes) = (get(0)?, axes()?.ok_or("no axes")?);
            let rank = x.dims.len() + axes.len();
            let mut ax: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?;
            ax.sort_unstable();
            let mut dims = x.dims;
            for a in ax {
                dims.insert(a.min(dims.len()), 1);
            }
            Ok(Ints { dims, values: x.values })
        }
        "Range" => {
            let (start, limit, delta) = (get(0)?.scalar()?, get(1)?.scalar()?, get(2)?.scalar()?);
            if delta == 0 {
                return Err("a step of 0".into());
            }
            let span = limit.checked_sub(start).ok_or("overflow")?;
            let count = if (span > 0) == (delta > 0) && span != 0 { (span.unsigned_abs().div_ceil(delta.unsigned_abs())) as usize } else { 0 };
            if count > max {
                return Err(format!("{count} elements (more than the {max} this gather can need)"));
            }
            let v: Vec<i64> = (0..count as i64).map(|k| start + k * delta).collect();
            ints(vec![v.len()], v, max)
        }
        "Add" | "Sub" | "Mul" => {
            let f: fn(i64, i64) -> Option<i64> = match n.op_type.as_str() {
                "Add" => i64::checked_add,
                "Sub" => i64::checked_sub,
                _ => i64::checked_mul,
            };
            broadcast(&get(0)?, &get(1)?, f, max)
        }
        "Concat" => {
            let parts: Vec<Ints> = (0..n.input.len()).map(get).collect::<Result<_, _>>()?;
            let first = parts.first().ok_or("no inputs")?;
            let a = axis(attr_int(n, "axis").ok_or("no axis")?, first.dims.len())?;
            if parts.iter().any(|p| p.dims.len() != first.dims.len() || p.dims.iter().enumerate().any(|(k, &d)| k != a && d != first.dims[k])) {
                return Err("inputs of different shapes".into());
            }
            let outer: usize = first.dims[..a].iter().product();
            let mut dims = first.dims.clone();
            dims[a] = parts.iter().map(|p| p.dims[a]).sum();
            let mut values = Vec::new();
            for o in 0..outer {
                for p in &parts {
                    let inner = p.values.len() / outer.max(1);
                    values.extend_from_slice(&p.values[o * inner..(o + 1) * inner]);
                }
            }
            ints(dims, values, max)
        }
        "Reshape" => {
            let (x, target) = (get(0)?, get(1)?.values);
            let mut dims = Vec::with_capacity(target.len());
            for (k, &t) in target.iter().enumerate() {
                dims.push(match t {
                    0 => *x.dims.get(k).ok_or("0 copies a missing dimension")? as i64,
                    t => t,
                });
            }
            let known: i64 = dims.iter().filter(|&&d| d != -1).try_fold(1i64, |a, &d| if d < 0 { None } else { a.checked_mul(d) }).ok_or("a negative dimension")?;
            let total = x.values.len() as i64;
            match dims.iter().filter(|&&d| d == -1).count() {
                0 => {}
                1 if known > 0 && total % known == 0 => dims.iter_mut().filter(|d| **d == -1).for_each(|d| *d = total / known),
                _ => return Err(format!("target {target:?} for {total} values")),
            }
            if dims.iter().product::<i64>() != total {
                return Err(format!("target {target:?} for {total} values"));
            }
            Ok(Ints { dims: dims.into_iter().map(|d| d as usize).collect(), values: x.values })
        }
        "Gather" => {
            let (x, idx) = (get(0)?, get(1)?);
            if x.dims.len() != 1 || attr_int(n, "axis").unwrap_or(0) != 0 {
                return Err("a gather other than from a vector".into());
            }
            let len = x.values.len() as i64;
            let values = idx.values.iter().map(|&i| x.values.get((if i < 0 { i + len } else { i }) as usize).copied().ok_or(format!("index {i} of {len}"))).collect::<Result<_, _>>()?;
            ints(idx.dims, values, max)
        }
        op => Err(format!("{op} is not one of the integer operators fineprune evaluates")),
    }
}

/// NumPy broadcasting of an element-wise integer operator, overflow an error.
fn broadcast(a: &Ints, b: &Ints, f: fn(i64, i64) -> Option<i64>, max: usize) -> Eval {
    let rank = a.dims.len().max(b.dims.len());
    let pad = |d: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - d.len()).chain(d.iter().copied()).collect() };
    let (da, db) = (pad(&a.dims), pad(&b.dims));
    let dims: Vec<usize> = da.iter().zip(&db).map(|(&x, &y)| if x == y || y == 1 { Ok(x) } else if x == 1 { Ok(y) } else { Err(format!("shapes {:?} and {:?} do not broadcast", a.dims, b.dims)) }).collect::<Result<_, _>>()?;
    let total = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&t| t <= max).ok_or_else(|| format!("{dims:?}: more than the {max} elements this gather can need"))?;
    // Row-major strides, 0 along a broadcast axis.
    let strides = |d: &[usize]| -> Vec<usize> {
        let mut s = vec![0; rank];
        let mut acc = 1;
        for k in (0..rank).rev() {
            s[k] = if d[k] == 1 { 0 } else { acc };
            acc *= d[k];
        }
        s
    };
    let (sa, sb) = (strides(&da), strides(&db));
    let mut values = Vec::with_capacity(total);
    let mut pos = vec![0usize; rank];
    for _ in 0..total {
        let (ia, ib) = pos.iter().enumerate().fold((0, 0), |(x, y), (k, &p)| (x + p * sa[k], y + p * sb[k]));
        values.push(f(a.values[ia], b.values[ib]).ok_or("integer overflow")?);
        for k in (0..rank).rev() {
            pos[k] += 1;
            if pos[k] < dims[k] {
                break;
            }
            pos[k] = 0;
        }
    }
    Ok(Ints { dims, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(dims: &[usize], values: &[i64]) -> Ints {
        Ints { dims: dims.to_vec(), values: values.to_vec() }
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n
    }

    fn constant(g: &mut GraphProto, name: &str, dims: &[i64], values: &[i64]) {
        let mut t = onnx_ir::TensorProto::new();
        t.name = name.into();
        t.data_type = 7;
        t.dims = dims.to_vec();
        t.int64_data = values.to_vec();
        g.initializer.push(t);
    }

    /// PyTorch's dynamo export of `as_strided` on a [N, 3, 1, 1] map: Range(0, N) * 3,
    /// unsqueezed, plus the offsets of one sample.
    fn strided_indices() -> GraphProto {
        let mut g = GraphProto::new();
        g.input.push(crate::model::onnx::export::value_info("x", &[None, Some(3), Some(1), Some(1)]));
        let mut shape = node("Shape", &["x"], "shape");
        let mut end = onnx_ir::AttributeProto::new();
        (end.name, end.i) = ("end".into(), 1);
        shape.attribute.push(end);
        g.node.push(shape);
        g.node.push(node("Squeeze", &["shape"], "n"));
        g.node.push(node("Range", &["zero", "n", "one"], "r"));
        g.node.push(node("Mul", &["r", "three"], "rs"));
        g.node.push(node("Unsqueeze", &["rs", "axes"], "ru"));
        g.node.push(node("Add", &["ru", "offsets"], "idx"));
        g.node.push(node("Gather", &["x", "idx"], "reads_data"));
        constant(&mut g, "zero", &[], &[0]);
        constant(&mut g, "one", &[], &[1]);
        constant(&mut g, "three", &[], &[3]);
        constant(&mut g, "axes", &[3], &[1, 2, 3]);
        constant(&mut g, "offsets", &[1, 3, 1, 1], &[0, 1, 2]);
        g
    }

    #[test]
    fn a_strided_gathers_indices_follow_the_batch_size() {
        let g = strided_indices();
        for batch in [1, 4] {
            let idx = evaluate(&g, 18, "idx", "x", batch, 100).unwrap();
            assert_eq!(idx.dims, [batch as usize, 3, 1, 1]);
            assert_eq!(idx.values, (0..3 * batch).collect::<Vec<_>>());
        }
        // Bounded before anything is allocated, and only integer arithmetic on the shape.
        assert!(evaluate(&g, 18, "idx", "x", 1000, 100).unwrap_err().contains("more than the 100"));
        assert!(evaluate(&g, 18, "reads_data", "x", 1, 100).unwrap_err().contains("read from the input's data"));
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let add = |a: i64, b: i64| a.checked_add(b);
        let r = broadcast(&ints(&[2, 1], &[0, 10]), &ints(&[3], &[1, 2, 3]), add, 100).unwrap();
        assert_eq!(r, ints(&[2, 3], &[1, 2, 3, 11, 12, 13]));
        assert!(broadcast(&ints(&[2], &[0, 1]), &ints(&[3], &[1, 2, 3]), add, 100).is_err());
        // The bound holds before anything is allocated.
        assert!(broadcast(&ints(&[1000, 1], &[0; 1000]), &ints(&[1000], &[0; 1000]), add, 10_000).is_err());
        assert!(broadcast(&ints(&[1], &[i64::MAX]), &ints(&[1], &[1]), add, 10).is_err());
    }
}
