#![no_main]
//! Graph shape inference with extreme attributes: a chain of up to 8 layers (convolutions,
//! pools, normalisations, channel shuffles and slices, element-wise ops) whose sizes come
//! straight from the input (anything a model file may declare). `validate` must never panic,
//! and a graph it accepts must have every size within the bounds the kernels rely on.
use fineprune::model::graph::{Graph, MAX_DIM, MAX_PARAMS, Node, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut words = data.chunks(4).map(|c| {
        let mut b = [0u8; 4];
        b[..c.len()].copy_from_slice(c);
        u32::from_le_bytes(b) as usize
    });
    let mut next = || words.next().unwrap_or(1);
    let input_shape = [next(), next(), next()];
    let mut nodes = vec![Node { name: "x".into(), op: Op::Input, inputs: vec![] }];
    let mut c = input_shape[0];
    for i in 0..(next() % 8) {
        let op = match next() % 11 {
            0 => {
                let out = next();
                let groups = next().max(1);
                let op = Op::Conv2d { in_channels: c, out_channels: out, kernel: [next(), next()], stride: [next(), next()], padding: [next(), next()], dilation: [next(), next()], groups, bias: next() % 2 == 0 };
                c = out;
                op
            }
            1 => Op::MaxPool { kernel: [next(), next()], stride: [next(), next()], padding: [next(), next()], ceil_mode: next() % 2 == 0 },
            2 => Op::AvgPool { kernel: [next(), next()], stride: [next(), next()], padding: [next(), next()], ceil_mode: next() % 2 == 0, count_include_pad: true },
            3 => Op::BatchNorm { channels: c, epsilon: 1e-5, momentum: 0.1 },
            4 => Op::Relu,
            5 => Op::LayerNorm { channels: if next() % 4 == 0 { next() } else { c }, epsilon: 1e-6 },
            6 => Op::ChannelShuffle { groups: next() },
            7 => {
                let (start, end) = (next(), next());
                c = end.saturating_sub(start);
                Op::ChannelSlice { start, end }
            }
            8 => Op::Clip { min: next() as f64, max: next() as f64 },
            9 => Op::Mul,
            _ => Op::GlobalAvgPool,
        };
        // Mul multiplies the value by itself (equal shapes); the rest read the previous node.
        let inputs = if matches!(op, Op::Mul) { vec![i, i] } else { vec![i] };
        nodes.push(Node { name: format!("n{i}"), op, inputs });
    }
    let last = nodes.len() - 1;
    nodes.push(Node { name: "flat".into(), op: Op::Flatten, inputs: vec![last] });
    nodes.push(Node { name: "fc".into(), op: Op::Linear { in_features: next(), out_features: next(), bias: true }, inputs: vec![last + 1] });
    let g = Graph { input_shape, output: nodes.len() - 1, nodes, prune_site: None };
    if let Ok(shapes) = g.validate() {
        assert!(shapes.iter().all(|s| s.numel() <= MAX_DIM), "{shapes:?}");
        assert!(g.param_count() <= MAX_PARAMS);
    }
});
