//! ONNX in and out. A suspect model usually comes from PyTorch or TensorFlow as ONNX; importing
//! it into the same graph IR as the built-in architectures means every command (inspect, eval,
//! defend, attack evaluation) works on it unchanged, and the repaired model goes back out as
//! ONNX a user can deploy with onnxruntime.
//!
//! The file comes from the attacker. [`guard`] bounds sizes and checks structure before
//! `onnx-ir` sees it, and a panic inside the parser is caught and reported as an error.

mod batch_index;
pub mod export;
pub mod guard;
mod import;
mod views;

use std::collections::BTreeMap;
use std::path::Path;

use onnx_ir::{Message, ModelProto, OnnxGraphBuilder};
use serde::{Deserialize, Serialize};

use crate::data::{Kind, Normalization};
use crate::error::{Error, Result};
use crate::fsutil::read_bounded;
use crate::model::{Model, ModelFile, ModelInfo};

pub use export::to_onnx_bytes;

/// How an imported model meets the world, kept so an export has the same interface.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OnnxIo {
    pub input_name: String,
    pub output_name: String,
    /// The model takes NHWC images (tf2onnx); internally we run NCHW.
    pub nhwc: bool,
    /// The model ends in a softmax; the graph keeps logits (training and margins need them).
    pub softmax_output: bool,
    /// The file's node names for imported layers -> our layer names, so `--layer` takes either.
    #[serde(default)]
    pub node_names: BTreeMap<String, String>,
}

/// Bounds on what an ONNX file may ask us to allocate.
#[derive(Clone, Debug)]
pub struct OnnxLimits {
    /// Largest file we read (protobuf itself stops at 2 GiB).
    pub max_file_bytes: u64,
    /// Largest total size of all tensors, after inlining external data.
    pub max_total_bytes: u64,
    /// Most elements in any one tensor.
    pub max_tensor_elements: usize,
    /// Load NaN/infinite weights instead of refusing them (for forensics).
    pub allow_non_finite: bool,
}

impl Default for OnnxLimits {
    /// Sized for the machine: the tensors may take at most a quarter of the memory available
    /// now (the model is copied a few times on its way in), and never more than 4 GiB.
    fn default() -> Self {
        let available = crate::fsutil::available_memory().unwrap_or(4 << 30);
        let max_total_bytes = (available / 4).clamp(64 << 20, 4 << 30);
        OnnxLimits { max_file_bytes: file_bound(max_total_bytes), max_total_bytes, max_tensor_elements: crate::model::graph::MAX_PARAMS, allow_non_finite: false }
    }
}

/// The file-size bound that goes with a tensor budget: the tensors plus room for the graph,
/// within protobuf's 2 GiB.
pub fn file_bound(max_total_bytes: u64) -> u64 {
    max_total_bytes.saturating_add(16 << 20).min(2 << 30)
}

/// What the user tells us about an imported model that ONNX does not carry: the input
/// normalisation it expects, class names, the dataset kind. Read from `MODEL.toml` beside
/// `MODEL.onnx`, overridden by the command line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Kind>,
}

impl Sidecar {
    /// What ONNX cannot carry about `file`: written beside an exported model so that
    /// importing the export gives back the same model.
    pub fn of(file: &ModelFile) -> Sidecar {
        let channels = file.model.graph.input_shape[0];
        let norm = &file.info.normalization;
        let numbered = file.info.classes.iter().enumerate().all(|(i, c)| *c == i.to_string());
        let identity = *norm == Normalization::identity(channels);
        Sidecar {
            mean: (!identity).then(|| norm.mean.clone()),
            std: (!identity).then(|| norm.std.clone()),
            classes: (!numbered).then(|| file.info.classes.clone()),
            data: file.info.data_kind,
        }
    }

    /// The sidecar of `model` (`x.onnx` -> `x.toml`), if there is one.
    pub fn beside(model: &Path) -> Result<Option<Sidecar>> {
        let path = model.with_extension("toml");
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = read_bounded(&path, 1 << 20)?;
        let text = String::from_utf8(bytes).map_err(|_| Error::format(&path, "not UTF-8 text"))?;
        toml::from_str(&text).map(Some).map_err(|e| Error::format(&path, e.to_string()))
    }
}

/// Options for importing: limits, and what the sidecar or command line add.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub limits: OnnxLimits,
    pub sidecar: Sidecar,
}

/// The words that mark an error made from a caught panic (see [`is_caught_panic`]).
const CAUGHT_PANIC: &str = "failed on this file (a caught panic)";

/// Whether `err` is a panic in onnx-ir or the importer that `no_panic` turned into an error:
/// the user sees one clear line, but for us it is a bug to fix or report upstream (the fuzz
/// targets treat it as a finding).
pub fn is_caught_panic(err: &Error) -> bool {
    err.to_string().contains(CAUGHT_PANIC)
}

/// Runs `f`, turning a panic into an error: a hostile file must not take the process down.
/// A last resort, not a way to hide bugs: see [`is_caught_panic`].
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    // Where it panicked goes into the message, so a user's report (or a fuzz finding) points
    // at the line to fix.
    crate::error::catch_panic(f).map_err(|p| {
        let at = p.location.map(|l| format!(" at {l}")).unwrap_or_default();
        Error::model(format!("{what} {CAUGHT_PANIC}: {}{at}", p.message))
    })
}

/// Imports an ONNX model file.
pub fn import(path: &Path, opts: &ImportOptions, device: &burn::tensor::Device) -> Result<ModelFile> {
    let bytes = read_bounded(path, opts.limits.max_file_bytes)?;
    // A bare file name (`model.onnx`) has the empty path as its parent: its folder is `.`.
    let dir = path.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d });
    import_bytes(&bytes, dir, opts, device).map_err(|e| match e {
        Error::Model(msg) | Error::Invalid(msg) => Error::format(path, msg),
        other => other,
    })
}

/// Imports ONNX bytes; `dir` is the folder external data may come from (none: refused).
pub fn import_bytes(bytes: &[u8], dir: Option<&Path>, opts: &ImportOptions, device: &burn::tensor::Device) -> Result<ModelFile> {
    let mut proto = ModelProto::parse_from_bytes(bytes).map_err(|e| Error::model(format!("not an ONNX model (protobuf: {e})")))?;
    guard::check(&mut proto, dir, &opts.limits)?;
    // onnx-ir reads the checked model: external data inlined, nodes sorted.
    let checked = proto.write_to_bytes().map_err(|e| Error::model(format!("re-encoding: {e}")))?;
    let parsed = no_panic("the ONNX parser", || OnnxGraphBuilder::new().parse_bytes(&checked))?.map_err(|e| Error::model(format!("{e}")))?;
    let conv = no_panic("the ONNX importer", || import::convert(&parsed, &proto))??;
    let classes = conv.graph.num_classes()?;
    let mut model = Model::zeroed(conv.graph, device)?;
    for (node, role, data) in conv.tensors {
        model.set_tensor(node, role, data)?;
    }
    if !opts.limits.allow_non_finite {
        model.check_finite()?;
    }
    let channels = model.graph.input_shape[0];
    let sc = &opts.sidecar;
    let normalization = match (&sc.mean, &sc.std) {
        (Some(mean), Some(std)) => Normalization { mean: mean.clone(), std: std.clone() },
        (None, None) => Normalization::identity(channels),
        _ => return Err(Error::invalid("give both mean and std for the model's input normalisation, or neither")),
    };
    normalization.validate(channels)?;
    let classes = match &sc.classes {
        Some(names) if names.len() != classes => return Err(Error::invalid(format!("{} class names for a model with {classes} outputs", names.len()))),
        Some(names) => names.clone(),
        None => (0..classes).map(|c| c.to_string()).collect(),
    };
    let info = ModelInfo { arch: "onnx".into(), data_kind: sc.data, classes, normalization, backdoor: None, extra: Default::default(), onnx: Some(conv.io) };
    Ok(ModelFile { model, info })
}
