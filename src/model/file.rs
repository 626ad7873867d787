//! Model files: one safetensors file holding the weights (PyTorch-style names, `conv1.weight`,
//! `bn1.running_mean`) and, in its metadata, the graph and everything evaluation needs
//! (architecture, input shape, class names, normalisation), so `eval` needs only the file.
//!
//! Files come from people we do not trust: the size is bounded before reading, the graph is
//! validated before any tensor is allocated, every tensor must match the graph exactly, and
//! non-finite weights are refused.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use burn_store::{KeyRemapper, ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use crate::data::{Kind, Normalization};
use crate::error::{Error, Result};
use crate::fsutil::{read_bounded, write_atomic};
use crate::model::graph::{Graph, Op};
use crate::model::net::Model;

const META_FORMAT: &str = "fineprune.format";
const META_GRAPH: &str = "fineprune.graph";
const META_INFO: &str = "fineprune.info";
const FORMAT_VERSION: &str = "1";

/// Default bound on a model file's size (4 GiB): well above any model this tool is for.
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 4 << 30;

/// What a model file says about the model besides its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Architecture name, or "custom".
    pub arch: String,
    /// The dataset kind the model was trained on, so `eval` can rebuild the input pipeline.
    pub data_kind: Option<Kind>,
    pub classes: Vec<String>,
    pub normalization: Normalization,
    /// The backdoor this model was built with, when an attack wrote it.
    #[serde(default)]
    pub backdoor: Option<crate::trigger::Backdoor>,
    /// Free-form provenance (training settings, seeds, results).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// For models imported from ONNX: the interface to keep when exporting again.
    #[serde(default)]
    pub onnx: Option<crate::model::onnx::OnnxIo>,
}

#[derive(Debug)]
pub struct ModelFile {
    pub model: Model,
    pub info: ModelInfo,
}

/// Escapes a node name for use inside a regular expression.
fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if !c.is_ascii_alphanumeric() && c != '_' {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// Pairs of (module path, file name) for every tensor of the graph, as regex patterns in the
/// direction asked for. Module paths are `layers.I.conv.weight`; file names `NODE.weight`.
fn name_patterns(graph: &Graph, to_file: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, node) in graph.nodes.iter().enumerate() {
        let roles: &[(&str, &str)] = match node.op {
            Op::Conv2d { .. } => &[("conv.weight", "weight"), ("conv.bias", "bias")],
            Op::Linear { .. } => &[("linear.weight", "weight"), ("linear.bias", "bias")],
            Op::LayerNorm { .. } => &[("ln.gamma", "weight"), ("ln.beta", "bias")],
            Op::BatchNorm { .. } => &[
                ("bn.gamma", "weight"),
                ("bn.beta", "bias"),
                ("bn.running_mean", "running_mean"),
                ("bn.running_var", "running_var"),
            ],
            _ => &[],
        };
        for (module_role, file_role) in roles {
            let module_path = format!("layers.{i}.{module_role}");
            let file_name = format!("{}.{file_role}", node.name);
            out.push(if to_file {
                (format!("^{}$", regex_escape(&module_path)), file_name)
            } else {
                (format!("^{}$", regex_escape(&file_name)), module_path)
            });
        }
    }
    out
}

fn remapper(graph: &Graph, to_file: bool) -> Result<KeyRemapper> {
    KeyRemapper::from_patterns(name_patterns(graph, to_file)).map_err(|e| Error::model(format!("tensor name pattern: {e}")))
}

impl ModelFile {
    /// Loads the dataset `spec` in this model's input shape (channels, size, classes checked)
    /// and normalised as the model expects. A model trained on one named dataset is not
    /// evaluated on another; formats (folders, arrays) may hold any data.
    pub fn load_data(&self, spec: &crate::data::DataSpec, opts: &crate::data::LoadOptions) -> Result<crate::data::Dataset> {
        let [c, h, w] = self.model.graph.input_shape;
        let classes = self.info.classes.len();
        if let Some(kind) = self.info.data_kind
            && kind != spec.kind
            && kind.is_named_dataset()
            && spec.kind.is_named_dataset()
        {
            return Err(Error::invalid(format!("the model was trained on {} data, not {}", kind.name(), spec.kind.name())));
        }
        let opts = crate::data::LoadOptions { channels: Some(c), classes: Some(classes), size: Some((h, w)), ..opts.clone() };
        let mut ds = crate::data::Dataset::load(spec, &opts)?;
        if ds.shape[0] != c || ds.classes.len() != classes {
            return Err(Error::invalid(format!(
                "the model expects {c} channels and {classes} classes; {spec} has {} channels and {} classes",
                ds.shape[0],
                ds.classes.len()
            )));
        }
        ds.normalization = self.info.normalization.clone();
        Ok(ds)
    }

    /// Triggered inputs given as data (every split of it), in this model's input shape and
    /// labelled with their true classes: what `--asr-data` measures attack success on.
    pub fn load_triggered(&self, spec: &crate::data::DataSpec, layout: Option<crate::data::Layout>) -> Result<crate::trigger::Triggered> {
        let opts = crate::data::LoadOptions { val_fraction: 0.0, layout, ..crate::data::LoadOptions::default() };
        let ds = self.load_data(spec, &opts)?;
        Ok(crate::trigger::Triggered::Given { inputs: ds.into_all(), source: spec.to_string() })
    }

    /// Serialises the model to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let graph = serde_json::to_string(&self.model.graph).expect("graph serialises");
        let info = serde_json::to_string(&self.info).expect("info serialises");
        let mut store = SafetensorsStore::from_bytes(None)
            .remap(remapper(&self.model.graph, true)?)
            .metadata(META_FORMAT, FORMAT_VERSION)
            .metadata(META_GRAPH, graph)
            .metadata(META_INFO, info);
        self.model.save_into(&mut store).map_err(|e| Error::model(format!("serialising weights: {e}")))?;
        store.get_bytes().map_err(|e| Error::model(format!("serialising weights: {e}")))
    }

    /// Writes the model atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
    }

    pub fn load(path: &Path, device: &Device) -> Result<ModelFile> {
        let bytes = read_bounded(path, DEFAULT_MAX_MODEL_BYTES)?;
        Self::from_bytes(bytes, device).map_err(|e| match e {
            Error::Model(msg) | Error::Invalid(msg) => Error::format(path, msg),
            other => other,
        })
    }

    pub fn from_bytes(bytes: Vec<u8>, device: &Device) -> Result<ModelFile> {
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::model(format!("not a safetensors file: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| Error::model(format!("no {key:?} in the file's metadata: not a fineprune model file")))
        };
        let version = get(META_FORMAT)?;
        if version != FORMAT_VERSION {
            return Err(Error::model(format!("model format version {version}, this build reads {FORMAT_VERSION}")));
        }
        let graph: Graph = serde_json::from_str(get(META_GRAPH)?).map_err(|e| Error::model(format!("graph metadata: {e}")))?;
        let shapes = graph.validate()?;
        let info: ModelInfo = serde_json::from_str(get(META_INFO)?).map_err(|e| Error::model(format!("info metadata: {e}")))?;
        info.normalization.validate(graph.input_shape[0])?;
        // The backdoor record's trigger is applied by eval, defend and the report: checked like
        // a trigger file before anything uses it.
        if let Some(b) = &info.backdoor {
            b.trigger.validate().map_err(|e| Error::model(format!("backdoor record: {e}")))?;
        }
        let classes = shapes[graph.output].numel();
        if info.classes.len() != classes {
            return Err(Error::model(format!("{} class names for {classes} outputs", info.classes.len())));
        }
        let mut model = Model::zeroed(graph, device)?;
        let mut store = SafetensorsStore::from_bytes(Some(bytes)).remap(remapper(&model.graph, false)?).allow_partial(true);
        let result = model.load_from(&mut store).map_err(|e| Error::model(format!("weights: {e}")))?;
        if !result.errors.is_empty() {
            return Err(Error::model(format!("weights do not match the graph: {:?}", result.errors)));
        }
        if !result.missing.is_empty() {
            let names: Vec<&str> = result.missing.iter().map(|m| m.0.as_str()).collect();
            return Err(Error::model(format!("missing weights: {}", names.join(", "))));
        }
        if !result.unused.is_empty() {
            return Err(Error::model(format!("tensors the graph has no place for: {}", result.unused.join(", "))));
        }
        model.check_finite()?;
        Ok(ModelFile { model, info })
    }
}
