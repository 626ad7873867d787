//! Layer tests on tiny shapes: every op's gradient against central finite differences, and
//! forward results against direct formulas.

use burn::tensor::{Device, Tensor, TensorData};
use fineprune::model::graph::{GraphBuilder, Op};
use fineprune::model::Model;
use fineprune::rng::Rng;

fn device() -> Device {
    fineprune::cpu_device().autodiff()
}

fn values(t: Tensor<4>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// A scalar loss: the output dotted with fixed random weights, so every output element's
/// gradient is exercised with a different coefficient.
fn loss_of(model: &Model, x: Tensor<4>, train: bool) -> Tensor<1> {
    let out = if train { model.forward_train(x, &mut Rng::new(0)) } else { model.forward(x) };
    let [n, k] = out.dims();
    let mut r = Rng::new(99);
    let w: Vec<f32> = (0..n * k).map(|_| r.normal() as f32).collect();
    let dev = out.device();
    (out * Tensor::from_data(TensorData::new(w, [n, k]), &dev)).sum()
}

/// Checks d(loss)/d(input) against central differences.
fn gradcheck(model: &Model, shape: [usize; 4], train: bool) {
    let dev = device();
    let mut r = Rng::new(5);
    let n: usize = shape.iter().product();
    // Values away from zero and from each other keep ReLU and max-pool differentiable here.
    let base: Vec<f32> = (0..n).map(|i| (r.normal() as f32) + 0.01 * i as f32).collect();
    let x = Tensor::<4>::from_data(TensorData::new(base.clone(), shape), &dev).require_grad();
    let grads = loss_of(model, x.clone(), train).backward();
    let analytic = values(x.grad(&grads).expect("input has a gradient"));
    let eps = 1e-2f32;
    let eval = |v: Vec<f32>| -> f64 {
        let t = Tensor::<4>::from_data(TensorData::new(v, shape), &dev);
        loss_of(model, t, train).into_scalar::<f32>() as f64
    };
    let mut worst = 0f64;
    for i in (0..n).step_by((n / 40).max(1)) {
        let mut plus = base.clone();
        plus[i] += eps;
        let mut minus = base.clone();
        minus[i] -= eps;
        let numeric = (eval(plus) - eval(minus)) / (2.0 * eps as f64);
        let err = (numeric - analytic[i] as f64).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
    }
    assert!(worst < 2e-2, "worst relative gradient error {worst}");
}

fn model_of(build: impl FnOnce(&mut GraphBuilder) -> usize, input: [usize; 3]) -> Model {
    let mut b = GraphBuilder::new(input);
    let last = build(&mut b);
    let f = b.flatten("flat_out", last);
    let out = b.linear("head", f, 3);
    let g = b.finish(out, "input");
    Model::init(g, 1, &device()).unwrap()
}

#[test]
fn conv_gradient() {
    let m = model_of(|b| b.conv("c", 0, 3, 3, 2, 1), [2, 5, 5]);
    gradcheck(&m, [2, 2, 5, 5], false);
}

#[test]
fn batchnorm_training_gradient() {
    let m = model_of(|b| { let c = b.conv("c", 0, 3, 3, 1, 1); b.bn("bn", c) }, [2, 4, 4]);
    gradcheck(&m, [3, 2, 4, 4], true);
}

#[test]
fn relu_and_pooling_gradients() {
    let m = model_of(|b| { let r = b.relu("r", 0); b.max_pool("p", r, 2, 2) }, [2, 4, 4]);
    gradcheck(&m, [2, 2, 4, 4], false);
    let m = model_of(
        |b| b.add("p", Op::AvgPool { kernel: [3, 3], stride: [2, 2], padding: [1, 1], ceil_mode: true, count_include_pad: false }, &[0]),
        [2, 5, 5],
    );
    gradcheck(&m, [2, 2, 5, 5], false);
    let m = model_of(|b| b.add("g", Op::GlobalAvgPool, &[0]), [3, 4, 4]);
    gradcheck(&m, [2, 3, 4, 4], false);
}

#[test]
fn residual_add_concat_and_linear_gradients() {
    let m = model_of(
        |b| {
            let c = b.conv("c", 0, 2, 3, 1, 1);
            let a = b.add("add", Op::Add, &[c, 0]);
            b.add("cat", Op::Concat, &[a, 0])
        },
        [2, 4, 4],
    );
    gradcheck(&m, [2, 2, 4, 4], false);
}

#[test]
fn conv_forward_matches_direct_formula() {
    let m = model_of(|b| b.conv("c", 0, 2, 3, 1, 1), [1, 4, 4]);
    let dev = fineprune::cpu_device();
    let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    let conv = m.layers[1].conv.as_ref().unwrap();
    let w = conv.weight.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let bias = conv.bias.as_ref().unwrap().val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let out = m.activations(Tensor::from_data(TensorData::new(x.clone(), [1, 1, 4, 4]), &dev).to_device(&device()), &[1]);
    let got = values(out[0].clone().into_map());
    for o in 0..2 {
        for i in 0..4 {
            for j in 0..4 {
                let mut s = bias[o];
                for di in 0..3 {
                    for dj in 0..3 {
                        let (y, xx) = (i as i32 + di as i32 - 1, j as i32 + dj as i32 - 1);
                        if (0..4).contains(&y) && (0..4).contains(&xx) {
                            s += w[o * 9 + di * 3 + dj] * x[(y * 4 + xx) as usize];
                        }
                    }
                }
                let g = got[o * 16 + i * 4 + j];
                assert!((g - s).abs() < 1e-5, "conv[{o},{i},{j}] = {g}, direct {s}");
            }
        }
    }
}

#[test]
fn batchnorm_updates_running_stats_like_pytorch() {
    let m = model_of(|b| b.bn("bn", 0), [1, 2, 2]);
    // Two samples, one channel: values 0..8, mean 3.5, unbiased variance 6.
    let x = Tensor::<4>::from_data(TensorData::new((0..8).map(|v| v as f32).collect::<Vec<_>>(), [2, 1, 2, 2]), &device());
    let _ = m.forward_train(x, &mut Rng::new(0));
    let bn = m.layers[1].bn.as_ref().unwrap();
    let mean = bn.running_mean.value_sync().into_scalar::<f32>();
    let var = bn.running_var.value_sync().into_scalar::<f32>();
    assert!((mean - 0.35).abs() < 1e-6, "running mean {mean}");
    assert!((var - (0.9 + 0.6)).abs() < 1e-5, "running var {var}");
}

#[test]
fn a_kept_snapshot_does_not_follow_later_training() {
    // Training keeps the best epoch's model while it goes on training; BatchNorm's running
    // statistics must not leak from the later epochs into that snapshot.
    let m = model_of(|b| { let c = b.conv("c", 0, 3, 3, 1, 1); b.bn("bn", c) }, [2, 4, 4]);
    let snapshot = burn::module::Module::valid(&m);
    let before = snapshot.named_tensors();
    let x = Tensor::<4>::from_data(TensorData::new((0..64).map(|v| v as f32).collect::<Vec<_>>(), [2, 2, 4, 4]), &device());
    let _ = m.forward_train(x, &mut Rng::new(0));
    assert_ne!(m.named_tensors(), before, "training updated the running statistics");
    assert_eq!(snapshot.named_tensors(), before, "the snapshot changed with the training model");
}

struct Unchanged;

impl fineprune::model::net::NodeHook for Unchanged {
    fn after(&self, _node: usize, out: fineprune::model::net::Activation) -> fineprune::model::net::Activation {
        out
    }
}

/// Inference folds a BatchNorm into the convolution it alone reads (weights scaled, shift
/// as bias); a hooked run takes every node on its own. Both agree within float rounding, for
/// a convolution with and without a bias, a depthwise one, and a stride of 2.
#[test]
fn batchnorm_folded_into_its_convolution_gives_the_same_logits() {
    let dev = fineprune::cpu_device();
    let mut b = GraphBuilder::new([3, 9, 9]);
    let c1 = b.conv("c1", 0, 6, 3, 1, 1);
    let n1 = b.bn("n1", c1);
    let r1 = b.relu("r1", n1);
    let c2 = b.conv_ext("c2", r1, 6, 3, 2, 1, false);
    let n2 = b.bn("n2", c2);
    let f = b.flatten("flat_out", n2);
    let out = b.linear("head", f, 3);
    let mut g = b.finish(out, "input");
    // c2 as a depthwise convolution.
    if let Op::Conv2d { groups, .. } = &mut g.nodes[c2].op {
        *groups = 6;
    }
    let model = Model::init(g, 1, &dev).unwrap();
    let mut r = Rng::new(5);
    let x = Tensor::<4>::from_data(TensorData::new((0..4 * 3 * 81).map(|_| r.normal() as f32).collect::<Vec<_>>(), [4, 3, 9, 9]), &dev);
    // Running statistics away from 0 and 1: a few training-mode passes.
    for _ in 0..3 {
        let _ = model.forward_train(x.clone() * 2.0 + 1.0, &mut Rng::new(0));
    }
    let folded = model.forward(x.clone()).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let separate = model.forward_hooked(x, fineprune::model::net::Mode::Eval, &Unchanged).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let diff = folded.iter().zip(&separate).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "folded and separate differ by {diff}");
}
