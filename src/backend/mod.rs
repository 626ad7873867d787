//! The CPU backend: our kernels for the operations that dominate training and inference
//! (convolution, Winograd 3x3, depthwise convolution, pooling, BatchNorm, the element-wise passes, Adam), registered as
//! a burn backend extension for the Flex device with hand-written backward passes.
//!
//! The model code calls [`ops`], which runs the kernels on a Flex device in f32 and burn's own
//! operations anywhere else, so the model stays backend-generic. Dependencies point one way:
//! `ops` and `adam` → `kernels` → `winograd` → `common`; `ops` → `depthwise` → `common`.

pub mod adam;
pub mod common;
mod depthwise;
pub mod kernels;
pub mod ops;
mod winograd;
