//! Models: the graph IR, built-in architectures, the burn module that runs a graph, and model
//! files.

pub mod arch;
pub mod file;
pub mod graph;
pub mod net;
pub mod onnx;
pub mod store;

pub use file::{ModelFile, ModelInfo};
pub use graph::{Graph, Node, Op, Shape};
pub use net::Model;
