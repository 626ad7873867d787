//! fineprune: find and remove backdoors in neural networks, after Liu, Dolan-Gavitt and Garg,
//! *Fine-Pruning* (RAID 2018).
//!
//! The pipeline, one module per stage: [`data`] (datasets, loaders) → [`model`] (graph IR,
//! architectures, model files) → [`metrics`] → [`train`] → [`prune`] → [`attack`] → [`scan`]
//! (is it backdoored?) → [`defense`] → [`report`]. The `fineprune` binary is a thin CLI over
//! these.

pub mod attack;
pub mod backend;
pub mod bench;
pub mod data;
pub mod defense;
pub mod demo;
pub mod error;
pub mod fsutil;
pub mod metrics;
pub mod progress;
pub mod prune;
pub mod report;
pub mod reproduce;
pub mod model;
pub mod rng;
pub mod scan;
pub mod train;
pub mod trigger;

pub use error::{Error, Result};

/// The CPU device (burn's pure-Rust Flex backend). Backends are chosen by device in burn, so a
/// GPU build only changes which device is created here.
pub fn cpu_device() -> burn::tensor::Device {
    burn::tensor::Device::flex()
}
