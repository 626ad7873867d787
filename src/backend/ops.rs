//! The fast CPU path: [`kernels`] registered as a burn backend extension for the
//! Flex backend, with hand-written backward passes for autodiff.
//!
//! [`conv2d`] and [`max_pool2d`] are what the interpreter calls. On a Flex device with f32
//! tensors and a geometry the kernels cover, they run the kernels; anything else (another
//! backend, grouped convolution, padded or ceil-mode pooling) goes to burn's own operation, so
//! the model code stays backend-generic and the results are the same either way (tested).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::AutodiffBackend;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

use super::depthwise;
use super::kernels::{self, AdamStep, ConvGeom, Pointwise, PoolGeom};

/// Convolution settings the kernels take: stride, padding, dilation; groups 1, or one group
/// per channel with one filter each (`depthwise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub depthwise: bool,
}

/// Pooling settings the kernels take: kernel and stride (no padding, floor mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
}

#[backend_extension(Flex, Autodiff)]
pub trait FastCpu: Backend {
    fn fast_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self>;
    /// With the bias added while each piece of output is in cache.
    fn fast_conv2d_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self>;
    /// A convolution's bias gradient: `grad` \[N, O, H, W\] summed to \[O\].
    fn fast_bias_grad(grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// An element-wise activation (any rank), in place when the input is not shared.
    fn fast_pointwise(x: FloatTensor<Self>, act: Pointwise) -> FloatTensor<Self>;
    /// Its gradient from `saved`, the output or the input (see [`Pointwise::grad_from_output`]).
    fn fast_pointwise_grad(saved: FloatTensor<Self>, grad: FloatTensor<Self>, act: Pointwise) -> FloatTensor<Self>;
    /// `a + b`, same shapes (any rank), in place on `a` when it is not shared.
    fn fast_add(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x * scale[c] + shift[c]` on a map [N, C, H, W]: BatchNorm with running statistics.
    /// Inference only (untracked).
    fn fast_channel_affine(x: FloatTensor<Self>, scale: FloatTensor<Self>, shift: FloatTensor<Self>) -> FloatTensor<Self>;
    /// One Adam step on a parameter (any rank): (parameter, first moment, second moment).
    fn fast_adam(param: FloatTensor<Self>, grad: FloatTensor<Self>, m: FloatTensor<Self>, v: FloatTensor<Self>, step: AdamStep) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    fn fast_conv2d_x_grad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self>;
    fn fast_conv2d_weight_grad(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self>;
    fn fast_max_pool2d(x: FloatTensor<Self>, spec: PoolSpec) -> FloatTensor<Self>;
    fn fast_max_pool2d_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, spec: PoolSpec) -> FloatTensor<Self>;
    /// BatchNorm with batch statistics: (output, mean, biased variance).
    fn fast_batch_norm_train(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// Its gradients: (input, gamma, beta).
    fn fast_batch_norm_train_grad(x: FloatTensor<Self>, gamma: FloatTensor<Self>, mean: FloatTensor<Self>, var: FloatTensor<Self>, grad: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

fn flex(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn geom(x: [usize; 4], w: [usize; 4], spec: ConvSpec) -> ConvGeom {
    // Graphs are shape-checked when built; this is the kernels' own guard (burn's ops panic too).
    if spec.depthwise {
        assert!(w[0] == x[1] && w[1] == 1, "depthwise convolution of {} channels with a weight {w:?}", x[1]);
    } else {
        assert_eq!(x[1], w[1], "convolution input has {} channels, its weight expects {}", x[1], w[1]);
    }
    ConvGeom {
        batch: x[0],
        in_channels: x[1],
        height: x[2],
        width: x[3],
        out_channels: w[0],
        kernel: [w[2], w[3]],
        stride: spec.stride,
        padding: spec.padding,
        dilation: spec.dilation,
    }
}

fn pool_geom(x: [usize; 4], spec: PoolSpec) -> PoolGeom {
    PoolGeom { planes: x[0] * x[1], height: x[2], width: x[3], kernel: spec.kernel, stride: spec.stride }
}

/// `t` contiguous and covering its whole buffer, without keeping a second reference to the
/// buffer (so an unshared tensor stays unshared and can be written in place).
fn contiguous(t: FlexTensor) -> FlexTensor {
    let c = t.to_contiguous();
    drop(t);
    c
}

fn flex1(values: Vec<f32>) -> FlexTensor {
    let n = values.len();
    FlexTensor::from_data(TensorData::new(values, [n]))
}

impl FastCpu for Flex {
    fn fast_batch_norm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, eps: f64) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let d = dims4(&x);
        let (y, mean, var) = kernels::batch_norm_train(d[0], d[1], d[2] * d[3], x.storage(), gamma.storage(), beta.storage(), eps);
        (flex(y, d), flex1(mean), flex1(var))
    }

    fn fast_batch_norm_train_grad(x: FlexTensor, gamma: FlexTensor, mean: FlexTensor, var: FlexTensor, grad: FlexTensor, eps: f64) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, gamma, grad) = (x.to_contiguous(), gamma.to_contiguous(), grad.to_contiguous());
        let (mean, var) = (mean.to_contiguous(), var.to_contiguous());
        let d = dims4(&x);
        let (dx, dg, db) = kernels::batch_norm_train_grad(d[0], d[1], d[2] * d[3], x.storage(), gamma.storage(), mean.storage(), var.storage(), eps, grad.storage());
        (flex(dx, d), flex1(dg), flex1(db))
    }

    fn fast_conv2d(x: FlexTensor, weight: FlexTensor, spec: ConvSpec) -> FlexTensor {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let g = geom(dims4(&x), dims4(&weight), spec);
        let out = if spec.depthwise { depthwise::forward(&g, x.storage(), weight.storage(), &[]) } else { kernels::conv2d(&g, x.storage(), weight.storage(), &[]) };
        let [ho, wo] = g.out_size();
        flex(out, [g.batch, g.out_channels, ho, wo])
    }

    fn fast_conv2d_bias(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, spec: ConvSpec) -> FlexTensor {
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
        let g = geom(dims4(&x), dims4(&weight), spec);
        let out = if spec.depthwise {
            depthwise::forward(&g, x.storage(), weight.storage(), bias.storage())
        } else {
            kernels::conv2d(&g, x.storage(), weight.storage(), bias.storage())
        };
        let [ho, wo] = g.out_size();
        flex(out, [g.batch, g.out_channels, ho, wo])
    }

    fn fast_bias_grad(grad: FlexTensor) -> FlexTensor {
        let grad = grad.to_contiguous();
        let d = dims4(&grad);
        flex1(kernels::bias_grad(d[0], d[1], d[2] * d[3], grad.storage()))
    }

    fn fast_pointwise(x: FlexTensor, act: Pointwise) -> FlexTensor {
        let mut x = contiguous(x);
        // `storage_mut` copies `x` first if it is shared.
        kernels::pointwise_in_place(x.storage_mut::<f32>(), act);
        x
    }

    fn fast_pointwise_grad(saved: FlexTensor, grad: FlexTensor, act: Pointwise) -> FlexTensor {
        let (saved, mut grad) = (saved.to_contiguous(), contiguous(grad));
        // `storage_mut` copies the gradient first if it is shared.
        kernels::pointwise_grad_in_place(saved.storage(), grad.storage_mut::<f32>(), act);
        grad
    }

    fn fast_adam(param: FlexTensor, grad: FlexTensor, m: FlexTensor, v: FlexTensor, step: AdamStep) -> (FlexTensor, FlexTensor, FlexTensor) {
        // In place: the optimiser hands over the only reference to each (else they are copied).
        let (mut param, grad, mut m, mut v) = (contiguous(param), grad.to_contiguous(), contiguous(m), contiguous(v));
        kernels::adam_step(param.storage_mut::<f32>(), grad.storage(), m.storage_mut::<f32>(), v.storage_mut::<f32>(), &step);
        (param, m, v)
    }

    fn fast_add(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (mut a, b) = (contiguous(a), b.to_contiguous());
        // `storage_mut` copies `a` first if it is shared.
        kernels::add_in_place(a.storage_mut::<f32>(), b.storage());
        a
    }

    fn fast_channel_affine(x: FlexTensor, scale: FlexTensor, shift: FlexTensor) -> FlexTensor {
        let (mut x, scale, shift) = (contiguous(x), scale.to_contiguous(), shift.to_contiguous());
        let d = dims4(&x);
        kernels::channel_affine_in_place(d[1], d[2] * d[3], x.storage_mut::<f32>(), scale.storage(), shift.storage());
        x
    }

    fn fast_conv2d_x_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, spec: ConvSpec) -> FlexTensor {
        let (weight, grad) = (weight.to_contiguous(), grad.to_contiguous());
        let g = geom(dims4(&x), dims4(&weight), spec);
        let dx = if spec.depthwise { depthwise::input_grad(&g, weight.storage(), grad.storage()) } else { kernels::conv2d_input_grad(&g, weight.storage(), grad.storage()) };
        flex(dx, [g.batch, g.in_channels, g.height, g.width])
    }

    fn fast_conv2d_weight_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, spec: ConvSpec) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let w = dims4(&weight);
        let g = geom(dims4(&x), w, spec);
        let dw = if spec.depthwise { depthwise::weight_grad(&g, x.storage(), grad.storage()) } else { kernels::conv2d_weight_grad(&g, x.storage(), grad.storage()) };
        flex(dw, w)
    }

    fn fast_max_pool2d(x: FlexTensor, spec: PoolSpec) -> FlexTensor {
        let x = x.to_contiguous();
        let d = dims4(&x);
        let g = pool_geom(d, spec);
        let [ho, wo] = g.out_size();
        flex(kernels::max_pool2d(&g, x.storage()), [d[0], d[1], ho, wo])
    }

    fn fast_max_pool2d_grad(x: FlexTensor, grad: FlexTensor, spec: PoolSpec) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let d = dims4(&x);
        flex(kernels::max_pool2d_grad(&pool_geom(d, spec), x.storage(), grad.storage()), d)
    }
}

/// A convolution's backward pass; with N = 3 the third parent is the bias.
#[derive(Debug)]
struct Conv2dBackward;

impl<B: Backend + FastCpu, const N: usize> Backward<B, N> for Conv2dBackward {
    type State = (NodeId, NodeId, ConvSpec);

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let (node_x, node_w) = (ops.parents[0].clone(), ops.parents[1].clone());
        let grad = grads.consume::<B>(&ops.node);
        if let Some(Some(node)) = ops.parents.get(2) {
            grads.register::<B>(node.id, B::fast_bias_grad(grad.clone()));
        }
        let (x_id, w_id, spec) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let w: FloatTensor<B> = checkpointer.retrieve_node_output(w_id);
        if let Some(node) = node_w {
            grads.register::<B>(node.id, B::fast_conv2d_weight_grad(x.clone(), w.clone(), grad.clone(), spec));
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::fast_conv2d_x_grad(x, w, grad, spec));
        }
    }
}

#[derive(Debug)]
struct PointwiseBackward(Pointwise);

impl<B: Backend + FastCpu> Backward<B, 1> for PointwiseBackward {
    /// What the gradient is computed from: the output, or the input (see
    /// [`Pointwise::grad_from_output`]).
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::fast_pointwise_grad(ops.state, grad, self.0));
        }
    }
}

#[derive(Debug)]
struct AddBackward;

impl<B: Backend + FastCpu> Backward<B, 2> for AddBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        match (node_a, node_b) {
            (Some(a), Some(b)) => {
                grads.register::<B>(a.id, grad.clone());
                grads.register::<B>(b.id, grad);
            }
            (Some(n), None) | (None, Some(n)) => grads.register::<B>(n.id, grad),
            (None, None) => {}
        }
    }
}

#[derive(Debug)]
struct MaxPoolBackward;

impl<B: Backend + FastCpu> Backward<B, 1> for MaxPoolBackward {
    type State = (NodeId, PoolSpec);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, spec) = ops.state;
        if let Some(node) = node_x {
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
            grads.register::<B>(node.id, B::fast_max_pool2d_grad(x, grad, spec));
        }
    }
}

#[derive(Debug)]
struct BatchNormBackward;

impl<B: Backend + FastCpu> Backward<B, 3> for BatchNormBackward {
    /// (x, gamma, batch mean, batch variance, epsilon).
    type State = (NodeId, NodeId, FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_id, gamma_id, mean, var, eps) = ops.state;
        let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_id);
        let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(gamma_id);
        let (dx, dgamma, dbeta) = B::fast_batch_norm_train_grad(x, gamma, mean, var, grad, eps);
        for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: Backend + FastCpu, C: CheckpointStrategy> FastCpu for Autodiff<B, C> {
    fn fast_batch_norm_train(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // The statistics are returned untracked, as burn's own batch_norm_train does.
        match BatchNormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (xs, gs) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let (y, mean, var) = B::fast_batch_norm_train(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), eps);
                let out = prep.finish((xs, gs, mean.clone(), var.clone(), eps), y);
                (out, Self::from_inner(mean), Self::from_inner(var))
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, var) = B::fast_batch_norm_train(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), eps);
                (prep.finish(y), Self::from_inner(mean), Self::from_inner(var))
            }
        }
    }

    fn fast_batch_norm_train_grad(_x: FloatTensor<Self>, _g: FloatTensor<Self>, _m: FloatTensor<Self>, _v: FloatTensor<Self>, _d: FloatTensor<Self>, _e: f64) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("gradients are computed on the inner backend")
    }

    fn fast_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self> {
        match Conv2dBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (xs, ws) = (prep.checkpoint(&x), prep.checkpoint(&weight));
                prep.finish((xs, ws, spec), B::fast_conv2d(x.into_primitive(), weight.into_primitive(), spec))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_conv2d(x.into_primitive(), weight.into_primitive(), spec)),
        }
    }

    fn fast_conv2d_bias(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self> {
        match Conv2dBackward.prepare::<C>([x.node(), weight.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (xs, ws) = (prep.checkpoint(&x), prep.checkpoint(&weight));
                prep.finish((xs, ws, spec), B::fast_conv2d_bias(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), spec))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_conv2d_bias(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), spec)),
        }
    }

    fn fast_bias_grad(_g: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("gradients are computed on the inner backend")
    }

    fn fast_pointwise(x: FloatTensor<Self>, act: Pointwise) -> FloatTensor<Self> {
        match PointwiseBackward(act).prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) if act.grad_from_output() => {
                let y = B::fast_pointwise(x.into_primitive(), act);
                prep.finish(y.clone(), y)
            }
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                prep.finish(x.clone(), B::fast_pointwise(x, act))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_pointwise(x.into_primitive(), act)),
        }
    }

    fn fast_pointwise_grad(_s: FloatTensor<Self>, _g: FloatTensor<Self>, _a: Pointwise) -> FloatTensor<Self> {
        unreachable!("gradients are computed on the inner backend")
    }

    fn fast_add(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = AddBackward.prepare::<C>([a.node(), b.node()]).compute_bound();
        prep.stateless(B::fast_add(a.into_primitive(), b.into_primitive()))
    }

    fn fast_channel_affine(_x: FloatTensor<Self>, _a: FloatTensor<Self>, _b: FloatTensor<Self>) -> FloatTensor<Self> {
        unreachable!("inference only: `channel_affine` takes burn's operations under autodiff")
    }

    fn fast_adam(_p: FloatTensor<Self>, _g: FloatTensor<Self>, _m: FloatTensor<Self>, _v: FloatTensor<Self>, _s: AdamStep) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        unreachable!("optimiser steps run on the inner backend")
    }

    fn fast_conv2d_x_grad(_x: FloatTensor<Self>, _w: FloatTensor<Self>, _g: FloatTensor<Self>, _s: ConvSpec) -> FloatTensor<Self> {
        unreachable!("gradients are computed on the inner backend")
    }

    fn fast_conv2d_weight_grad(_x: FloatTensor<Self>, _w: FloatTensor<Self>, _g: FloatTensor<Self>, _s: ConvSpec) -> FloatTensor<Self> {
        unreachable!("gradients are computed on the inner backend")
    }

    fn fast_max_pool2d(x: FloatTensor<Self>, spec: PoolSpec) -> FloatTensor<Self> {
        match MaxPoolBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let xs = prep.checkpoint(&x);
                prep.finish((xs, spec), B::fast_max_pool2d(x.into_primitive(), spec))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fast_max_pool2d(x.into_primitive(), spec)),
        }
    }

    fn fast_max_pool2d_grad(_x: FloatTensor<Self>, _g: FloatTensor<Self>, _s: PoolSpec) -> FloatTensor<Self> {
        unreachable!("gradients are computed on the inner backend")
    }
}

/// Whether tensors on this device run on the Flex backend in f32 (the kernels' domain).
pub fn on_flex_f32<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && matches!(t.device().without_autodiff().as_dispatch(), burn::backend::DispatchDevice::Flex(_))
}

/// 2-D convolution: the kernels on Flex (groups = 1, or depthwise), burn's operation otherwise.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, opts: ConvOptions<2>) -> Tensor<4> {
    let symmetric = opts.padding.iter().all(|(begin, end)| begin == end);
    let [_, c, _, _] = x.dims();
    let [o, per_group, _, _] = weight.dims();
    let depthwise = opts.groups == c && o == c && per_group == 1 && c > 1;
    if (opts.groups != 1 && !depthwise) || !symmetric || !on_flex_f32(&x) || !on_flex_f32(&weight) || bias.as_ref().is_some_and(|b| !on_flex_f32(b)) {
        return burn::tensor::module::conv2d(x, weight, bias, opts);
    }
    let spec = ConvSpec { stride: opts.stride, padding: opts.padding.map(|p| p.0), dilation: opts.dilation, depthwise };
    Tensor::from_dispatch(match bias {
        Some(b) => <Dispatch as FastCpu>::fast_conv2d_bias(x.into_dispatch(), weight.into_dispatch(), b.into_dispatch(), spec),
        None => <Dispatch as FastCpu>::fast_conv2d(x.into_dispatch(), weight.into_dispatch(), spec),
    })
}

/// One Adam step (see [`kernels::adam_step`]) on tensors where [`on_flex_f32`] holds.
pub fn adam_step<const D: usize>(param: Tensor<D>, grad: Tensor<D>, m: Tensor<D>, v: Tensor<D>, step: AdamStep) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    assert!([&param, &grad, &m, &v].iter().all(|t| on_flex_f32(t)), "adam_step: tensors off the kernels' device");
    let (p, m, v) = <Dispatch as FastCpu>::fast_adam(param.into_dispatch(), grad.into_dispatch(), m.into_dispatch(), v.into_dispatch(), step);
    (Tensor::from_dispatch(p), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}

/// `a + b` of equal shapes: the parallel kernel on Flex in f32, burn's operation otherwise
/// (which also broadcasts).
pub fn add<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    if a.dims() != b.dims() || !on_flex_f32(&a) || !on_flex_f32(&b) {
        return a + b;
    }
    Tensor::from_dispatch(<Dispatch as FastCpu>::fast_add(a.into_dispatch(), b.into_dispatch()))
}

/// `x * scale[c] + shift[c]` on a map [N, C, H, W]: the parallel kernel in place on Flex in
/// f32 without autodiff, burn's broadcast operations otherwise.
pub fn channel_affine(x: Tensor<4>, scale: Tensor<1>, shift: Tensor<1>) -> Tensor<4> {
    let c = scale.dims()[0];
    if x.device().is_autodiff() || !on_flex_f32(&x) || !on_flex_f32(&scale) || !on_flex_f32(&shift) {
        return x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1]);
    }
    Tensor::from_dispatch(<Dispatch as FastCpu>::fast_channel_affine(x.into_dispatch(), scale.into_dispatch(), shift.into_dispatch()))
}

/// An activation on its kernel on Flex in f32 (in place when `x` is not shared), `otherwise`
/// (burn's operation) anywhere else.
fn pointwise<const D: usize>(x: Tensor<D>, act: Pointwise, otherwise: impl FnOnce(Tensor<D>) -> Tensor<D>) -> Tensor<D> {
    if !on_flex_f32(&x) {
        return otherwise(x);
    }
    Tensor::from_dispatch(<Dispatch as FastCpu>::fast_pointwise(x.into_dispatch(), act))
}

/// ReLU (any rank).
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    pointwise(x, Pointwise::Relu, burn::tensor::activation::relu)
}

/// SiLU (any rank).
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    pointwise(x, Pointwise::Silu, burn::tensor::activation::silu)
}

/// GELU, the exact (erf) form (any rank).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    pointwise(x, Pointwise::Gelu, burn::tensor::activation::gelu)
}

/// `min(max(x, min), max)` (any rank). Off Flex, burn's clamp, whose gradient keeps the
/// bounds (PyTorch's hardtanh, and our kernel, do not).
pub fn clip<const D: usize>(x: Tensor<D>, min: f64, max: f64) -> Tensor<D> {
    pointwise(x, Pointwise::Clip { min: min as f32, max: max as f32 }, |x| x.clamp(min, max))
}

/// 2-D max pooling: the kernels on Flex without padding, dilation or ceil mode, burn's
/// operation otherwise.
pub fn max_pool2d(x: Tensor<4>, opts: MaxPoolOptions<2>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let plain = opts.padding == [(0, 0); 2] && opts.dilation == [1, 1] && !opts.ceil_mode && h >= opts.kernel_size[0] && w >= opts.kernel_size[1];
    if !plain || !on_flex_f32(&x) {
        return burn::tensor::module::max_pool2d(x, opts);
    }
    let spec = PoolSpec { kernel: opts.kernel_size, stride: opts.stride };
    Tensor::from_dispatch(<Dispatch as FastCpu>::fast_max_pool2d(x.into_dispatch(), spec))
}

/// BatchNorm with batch statistics on a map [N, C, H, W]: (output, mean, biased variance); the
/// kernels on Flex, burn's operation otherwise.
pub fn batch_norm_train(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    if !on_flex_f32(&x) {
        let out = burn::tensor::module::batch_norm_train(x, gamma, beta, eps);
        return (out.output, out.mean, out.variance);
    }
    let (y, mean, var) = <Dispatch as FastCpu>::fast_batch_norm_train(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), eps);
    (Tensor::from_dispatch(y), Tensor::from_dispatch(mean), Tensor::from_dispatch(var))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use burn::tensor::Device;

    fn random<const D: usize>(shape: [usize; D], rng: &mut Rng, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let (a, b) = (a.into_data().try_to_vec::<f32>().unwrap(), b.into_data().try_to_vec::<f32>().unwrap());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{what}: relative difference {worst}");
    }

    /// Output and all three gradients of the kernels equal burn's own convolution.
    #[test]
    fn convolution_matches_burn_forward_and_backward() {
        let device = crate::cpu_device().autodiff();
        let mut rng = Rng::new(3);
        // (x shape, out channels, kernel, stride, padding, dilation)
        let cases = [
            ([2, 3, 9, 8], 5, [3, 3], [1, 1], [1, 1], [1, 1]),
            ([3, 4, 10, 10], 6, [3, 3], [2, 2], [1, 1], [1, 1]),
            ([2, 6, 7, 7], 4, [1, 1], [1, 1], [0, 0], [1, 1]),
            ([2, 6, 8, 8], 4, [1, 1], [2, 2], [0, 0], [1, 1]),
            ([1, 2, 12, 11], 3, [5, 4], [1, 2], [2, 0], [2, 1]),
            // Stride 1, output as large as the input: im2col's shifted-plane path.
            ([2, 3, 10, 7], 4, [5, 5], [1, 1], [2, 2], [1, 1]),
            ([2, 2, 9, 9], 3, [3, 3], [1, 1], [2, 2], [2, 2]),
            ([2, 2, 3, 2], 3, [5, 5], [1, 1], [2, 2], [1, 1]),
            // Large enough that the kernels split the batch into groups (see `group_size`).
            ([10, 64, 40, 40], 4, [3, 3], [1, 1], [1, 1], [1, 1]),
            // Winograd (see `winograd::applies`), odd sizes and both usual paddings.
            ([2, 64, 16, 17], 65, [3, 3], [1, 1], [1, 1], [1, 1]),
            ([2, 128, 10, 9], 128, [3, 3], [1, 1], [0, 0], [1, 1]),
            // Winograd's smallest channel count, 32 on 32x32 or larger.
            ([2, 32, 32, 33], 32, [3, 3], [1, 1], [1, 1], [1, 1]),
        ];
        for (case, (xs, o, k, stride, pad, dil)) in cases.into_iter().enumerate() {
            let x = random(xs, &mut rng, &device).require_grad();
            let w = random([o, xs[1], k[0], k[1]], &mut rng, &device).require_grad();
            let b = random([o], &mut rng, &device).require_grad();
            // Every other case without a bias (the kernels fuse it when there is one).
            let opts = ConvOptions::new(stride, pad, dil, 1);
            same_convolution(x, w, b, case % 2 == 0, opts, &format!("{xs:?} k{k:?} s{stride:?} p{pad:?} d{dil:?}"), &mut rng);
        }
    }

    /// Our convolution and burn's give the same output and the same three gradients (the bias
    /// `b` is used when `with_bias`).
    fn same_convolution(x: Tensor<4>, w: Tensor<4>, b: Tensor<1>, with_bias: bool, opts: ConvOptions<2>, what: &str, rng: &mut Rng) {
        let bias = with_bias.then(|| b.clone());
        let fast = conv2d(x.clone(), w.clone(), bias.clone(), opts.clone());
        let slow = burn::tensor::module::conv2d(x.clone(), w.clone(), bias, opts);
        let r = random(fast.dims(), rng, &fast.device());
        let gf = (fast.clone() * r.clone()).sum().backward();
        let gs = (slow.clone() * r).sum().backward();
        close(fast, slow, &format!("{what} output"));
        close(x.grad(&gf).unwrap(), x.grad(&gs).unwrap(), &format!("{what} input gradient"));
        close(w.grad(&gf).unwrap(), w.grad(&gs).unwrap(), &format!("{what} weight gradient"));
        if with_bias {
            close(b.grad(&gf).unwrap(), b.grad(&gs).unwrap(), &format!("{what} bias gradient"));
        }
    }

    /// Depthwise convolutions (one filter per channel) equal burn's grouped convolution:
    /// output and all three gradients.
    #[test]
    fn depthwise_convolution_matches_burn_forward_and_backward() {
        let device = crate::cpu_device().autodiff();
        let mut rng = Rng::new(5);
        // (x shape, kernel, stride, padding, dilation)
        let cases = [
            ([2, 8, 9, 9], [3, 3], [1, 1], [1, 1], [1, 1]),
            ([3, 6, 10, 11], [3, 3], [2, 2], [1, 1], [1, 1]),
            ([2, 4, 12, 12], [5, 5], [1, 1], [2, 2], [1, 1]),
            ([2, 4, 13, 12], [5, 5], [2, 2], [2, 2], [1, 1]),
            ([1, 3, 14, 14], [7, 7], [1, 1], [3, 3], [1, 1]),
            ([2, 5, 9, 10], [3, 3], [1, 2], [2, 1], [2, 1]),
            ([2, 4, 2, 3], [3, 3], [1, 1], [1, 1], [1, 1]),
            ([1, 3, 6, 6], [3, 3], [1, 1], [0, 0], [1, 1]),
            // Strides 3 and 2 with dilation: the column phases of the padded plane.
            ([2, 3, 11, 13], [3, 3], [3, 3], [1, 1], [1, 1]),
            ([2, 3, 12, 11], [3, 3], [2, 2], [2, 2], [2, 2]),
            // A 1x1 output.
            ([2, 4, 2, 2], [3, 3], [2, 2], [1, 1], [1, 1]),
            // Batches the kernels stack several samples of a channel for, the last stack short.
            ([9, 3, 5, 5], [3, 3], [1, 1], [1, 1], [1, 1]),
            ([10, 2, 4, 4], [3, 3], [2, 2], [1, 1], [1, 1]),
        ];
        for (case, (xs, k, stride, pad, dil)) in cases.into_iter().enumerate() {
            let c = xs[1];
            let x = random(xs, &mut rng, &device).require_grad();
            let w = random([c, 1, k[0], k[1]], &mut rng, &device).require_grad();
            let b = random([c], &mut rng, &device).require_grad();
            let opts = ConvOptions::new(stride, pad, dil, c);
            same_convolution(x, w, b, case % 2 == 0, opts, &format!("depthwise {xs:?} k{k:?} s{stride:?} p{pad:?} d{dil:?}"), &mut rng);
        }
    }

    /// Our operation and burn's give the same output and the same gradient with respect to `x`
    /// (under a random upstream gradient).
    fn same_operation(x: Tensor<4>, fast: impl Fn(Tensor<4>) -> Tensor<4>, slow: impl Fn(Tensor<4>) -> Tensor<4>, rng: &mut Rng, what: &str) {
        let (yf, ys) = (fast(x.clone()), slow(x.clone()));
        let r = random(yf.dims(), rng, &x.device());
        let gf = (yf.clone() * r.clone()).sum().backward();
        let gs = (ys.clone() * r).sum().backward();
        close(yf, ys, &format!("{what} output"));
        close(x.grad(&gf).unwrap(), x.grad(&gs).unwrap(), &format!("{what} gradient"));
    }

    /// [`same_operation`] for an activation, on inputs spread over [-3, 3] standard deviations.
    fn same_activation(fast: impl Fn(Tensor<4>) -> Tensor<4>, slow: impl Fn(Tensor<4>) -> Tensor<4>, seed: u64, what: &str) {
        let mut rng = Rng::new(seed);
        let x = random([3, 4, 6, 5], &mut rng, &crate::cpu_device().autodiff()).mul_scalar(3.0).require_grad();
        same_operation(x, fast, slow, &mut rng, what);
    }

    #[test]
    fn gelu_matches_burn_forward_and_backward() {
        same_activation(gelu, burn::tensor::activation::gelu, 8, "gelu");
    }

    #[test]
    fn silu_matches_burn_forward_and_backward() {
        same_activation(silu, burn::tensor::activation::silu, 7, "silu");
    }

    #[test]
    fn clip_matches_burn_forward_and_backward() {
        for (min, max) in [(0.0, 6.0), (-1.0, 1.0), (0.5, 0.75)] {
            same_activation(|x| clip(x, min, max), |x| x.clamp(min, max), 6, &format!("clip [{min}, {max}]"));
        }
    }

    #[test]
    fn max_pooling_matches_burn_forward_and_backward() {
        let device = crate::cpu_device().autodiff();
        let mut rng = Rng::new(4);
        for (xs, k, s) in [([2, 3, 8, 8], [2, 2], [2, 2]), ([2, 3, 9, 7], [2, 2], [2, 2]), ([1, 2, 11, 10], [3, 3], [2, 2]), ([1, 2, 6, 6], [3, 2], [1, 2])] {
            let x = random(xs, &mut rng, &device).require_grad();
            let opts = MaxPoolOptions::new(k).with_stride(s);
            same_operation(x, |x| max_pool2d(x, opts.clone()), |x| burn::tensor::module::max_pool2d(x, opts.clone()), &mut rng, &format!("{xs:?} k{k:?}"));
        }
    }

    #[test]
    fn batch_norm_matches_burn_forward_and_backward() {
        let device = crate::cpu_device().autodiff();
        let mut rng = Rng::new(5);
        for xs in [[4, 3, 5, 6], [8, 5, 1, 1]] {
            let x = random(xs, &mut rng, &device).mul_scalar(3.0).add_scalar(1.5).require_grad();
            let gamma = random([xs[1]], &mut rng, &device).require_grad();
            let beta = random([xs[1]], &mut rng, &device).require_grad();
            let (fast, mean, var) = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
            let slow = burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
            close(mean, slow.mean.clone(), "mean");
            close(var, slow.variance.clone(), "variance");
            let r = random(xs, &mut rng, &device);
            let gf = (fast.clone() * r.clone()).sum().backward();
            let gs = (slow.output.clone() * r).sum().backward();
            close(fast, slow.output, &format!("{xs:?} output"));
            close(x.grad(&gf).unwrap(), x.grad(&gs).unwrap(), &format!("{xs:?} input gradient"));
            close(gamma.grad(&gf).unwrap(), gamma.grad(&gs).unwrap(), &format!("{xs:?} gamma gradient"));
            close(beta.grad(&gf).unwrap(), beta.grad(&gs).unwrap(), &format!("{xs:?} beta gradient"));
        }
    }

    /// Ties (ReLU's zeros) send the gradient to the first maximum in row order, in the 2x2
    /// path as in the general one; odd sizes leave the uncovered row and column at zero.
    #[test]
    fn max_pooling_gradient_breaks_ties_like_the_general_path() {
        let mut rng = Rng::new(6);
        for (h, w) in [(8, 8), (7, 9)] {
            let x: Vec<f32> = (0..2 * h * w).map(|_| if rng.below(3) == 0 { 1.0 } else { 0.0 }).collect();
            let g = kernels::PoolGeom { planes: 2, height: h, width: w, kernel: [2, 2], stride: [2, 2] };
            let [ho, wo] = g.out_size();
            let dy: Vec<f32> = (1..=2 * ho * wo).map(|v| v as f32).collect();
            let fast = kernels::max_pool2d_grad(&g, &x, &dy);
            // The same pooling as a 2x2 window with stride (2, 2) through the general path:
            // one window per output, first maximum in row order.
            let mut slow = vec![0.0f32; 2 * h * w];
            for p in 0..2 {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let cells = [(2 * oy, 2 * ox), (2 * oy, 2 * ox + 1), (2 * oy + 1, 2 * ox), (2 * oy + 1, 2 * ox + 1)];
                        let best = cells.iter().fold(cells[0], |b, &c| if x[p * h * w + c.0 * w + c.1] > x[p * h * w + b.0 * w + b.1] { c } else { b });
                        slow[p * h * w + best.0 * w + best.1] += dy[(p * ho + oy) * wo + ox];
                    }
                }
            }
            assert_eq!(fast, slow, "{h}x{w}");
        }
    }

    /// ReLU matches burn's, forward and backward, NaN included, whether its input is shared
    /// (copied) or not (in place), for maps and flat activations.
    #[test]
    fn relu_matches_burn() {
        let device = crate::cpu_device().autodiff();
        let mut rng = Rng::new(7);
        let mut v: Vec<f32> = (0..2 * 3 * 70 * 70).map(|_| rng.normal() as f32).collect();
        v[17] = f32::NAN;
        let x = Tensor::<4>::from_data(TensorData::new(v, [2, 3, 70, 70]), &device).require_grad();
        let (fast, slow) = (relu(x.clone() * 1.0), burn::tensor::activation::relu(x.clone() * 1.0));
        let r = random(fast.dims(), &mut rng, &device);
        let gf = (fast.clone() * r.clone()).sum().backward();
        let gs = (slow.clone() * r).sum().backward();
        let (a, b) = (fast.into_data().try_to_vec::<f32>().unwrap(), slow.into_data().try_to_vec::<f32>().unwrap());
        assert!(a[17].is_nan() && b[17].is_nan());
        assert!(a.iter().zip(&b).all(|(p, q)| p == q || (p.is_nan() && q.is_nan())));
        let (ga, gb) = (x.grad(&gf).unwrap().into_data().try_to_vec::<f32>().unwrap(), x.grad(&gs).unwrap().into_data().try_to_vec::<f32>().unwrap());
        assert_eq!(ga, gb);
        // A shared input is left as it was.
        let flat = random([5, 40], &mut rng, &crate::cpu_device());
        let before = flat.clone().into_data();
        let out = relu(flat.clone());
        assert_eq!(flat.into_data(), before);
        assert_eq!(out.into_data(), burn::tensor::activation::relu(Tensor::<2>::from_data(before, &crate::cpu_device())).into_data());
    }

    /// The residual addition (gradients to both inputs, shared inputs left alone) and
    /// BatchNorm's inference affine match burn's broadcast operations.
    #[test]
    fn add_and_channel_affine_match_burn() {
        let device = crate::cpu_device().autodiff();
        let mut rng = Rng::new(8);
        let (a, b) = (random([3, 4, 9, 9], &mut rng, &device).require_grad(), random([3, 4, 9, 9], &mut rng, &device).require_grad());
        let r = random([3, 4, 9, 9], &mut rng, &device);
        let fast = add(a.clone(), b.clone());
        let slow = a.clone() + b.clone();
        let gf = (fast.clone() * r.clone()).sum().backward();
        let gs = (slow.clone() * r).sum().backward();
        close(fast, slow, "sum");
        close(a.grad(&gf).unwrap(), a.grad(&gs).unwrap(), "first gradient");
        close(b.grad(&gf).unwrap(), b.grad(&gs).unwrap(), "second gradient");

        let device = crate::cpu_device();
        let x = random([3, 4, 5, 7], &mut rng, &device);
        let (scale, shift) = (random([4], &mut rng, &device), random([4], &mut rng, &device));
        let kept = x.clone().into_data();
        let fast = channel_affine(x.clone(), scale.clone(), shift.clone());
        close(fast, x.clone() * scale.reshape([1, 4, 1, 1]) + shift.reshape([1, 4, 1, 1]), "affine");
        assert_eq!(x.into_data(), kept, "a shared input is not written");
    }

    /// A NaN in a window propagates (PyTorch's rule), in the 2x2 fast path and the general one.
    #[test]
    fn max_pooling_propagates_nan() {
        let device = crate::cpu_device();
        let mut v = vec![0.0f32; 16];
        v[5] = f32::NAN;
        for k in [2, 3] {
            let x = Tensor::<4>::from_data(TensorData::new(v.clone(), [1, 1, 4, 4]), &device);
            let y = max_pool2d(x, MaxPoolOptions::new([k, k]).with_stride([k.min(2), k.min(2)])).into_data().try_to_vec::<f32>().unwrap();
            assert!(y[0].is_nan(), "kernel {k}: {y:?}");
        }
    }
}
