//! Models in and out, whatever the format: fineprune model files (`.safetensors` with our
//! metadata), ONNX (`.onnx`), and PyTorch state dicts (plain `.safetensors` of a standard
//! architecture, with `--arch`). The CLI and the library go through here, so every command
//! accepts every format.

use std::path::Path;

use burn::tensor::{DType, Device, TensorData};

use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::fsutil::{read_bounded, write_atomic};
use crate::model::file::DEFAULT_MAX_MODEL_BYTES;
use crate::model::onnx::{self, ImportOptions};
use crate::model::{Model, ModelFile, ModelInfo, arch};

fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads a model file: ONNX by extension, else a fineprune model file.
pub fn load(path: &Path, opts: &ImportOptions, device: &Device) -> Result<ModelFile> {
    if is_onnx(path) { onnx::import(path, opts, device) } else { ModelFile::load(path, device) }
}

/// Saves a model atomically: ONNX by extension (with a `.toml` sidecar beside it holding the
/// normalisation and class names ONNX cannot carry, when there are any), else a fineprune
/// model file.
pub fn save(file: &ModelFile, path: &Path) -> Result<()> {
    if !is_onnx(path) {
        return file.save(path);
    }
    let bytes = onnx::to_onnx_bytes(file)?;
    let sidecar = onnx::Sidecar::of(file);
    if sidecar != onnx::Sidecar::default() {
        let text = toml::to_string(&sidecar).map_err(|e| Error::model(format!("sidecar: {e}")))?;
        write_atomic(&path.with_extension("toml"), text.as_bytes())?;
    }
    write_atomic(path, &bytes)
}

/// Builds `arch` with the weights of a PyTorch state dict saved with safetensors
/// (`safetensors.torch.save_file(model.state_dict(), path)`): tensor names are PyTorch's
/// (`layer1.0.conv1.weight`, `bn1.running_mean`), which are our node names plus a role.
/// The number of classes comes from the classifier's weight; `num_batches_tracked` is ignored.
pub fn from_state_dict(arch_name: &str, path: &Path, input: Option<[usize; 3]>, normalization: Option<Normalization>, device: &Device) -> Result<ModelFile> {
    let input = input.or_else(|| arch::default_input(arch_name)).ok_or_else(|| Error::invalid(format!("unknown architecture {arch_name:?}")))?;
    let bytes = read_bounded(path, DEFAULT_MAX_MODEL_BYTES)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    // The classifier is the graph's output node; its weight's first dimension is the class count.
    let probe = arch::build(arch_name, input, 2)?;
    let out_name = format!("{}.weight", probe.nodes[probe.output].name);
    let out_view = st.tensor(&out_name).map_err(|_| Error::format(path, format!("no tensor {out_name:?}: not a {arch_name} state dict")))?;
    let classes = match out_view.shape() {
        [classes, _] if *classes >= 1 => *classes,
        other => return Err(Error::format(path, format!("tensor {out_name:?} has shape {other:?}; a classifier weight is [classes, features]"))),
    };
    let mut model = Model::zeroed(arch::build(arch_name, input, classes)?, device)?;
    let mut unused = Vec::new();
    let mut set = std::collections::HashSet::new();
    for (name, view) in st.tensors() {
        if name.ends_with(".num_batches_tracked") {
            continue;
        }
        let Some((node, role)) = name.rsplit_once('.') else {
            unused.push(name);
            continue;
        };
        let Ok(i) = model.graph.index_of(node) else {
            unused.push(name);
            continue;
        };
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F64 => DType::F64,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => return Err(Error::format(path, format!("tensor {name}: dtype {other:?} is not a float type"))),
        };
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        let role: &'static str = match role {
            "weight" => "weight",
            "bias" => "bias",
            "running_mean" => "running_mean",
            "running_var" => "running_var",
            _ => {
                unused.push(name);
                continue;
            }
        };
        model.set_tensor(i, role, data).map_err(|e| Error::format(path, e.to_string()))?;
        set.insert(name);
    }
    if !unused.is_empty() {
        unused.sort();
        return Err(Error::format(path, format!("tensors {arch_name} has no place for: {}", unused.join(", "))));
    }
    let missing: Vec<String> = model.named_tensors().into_iter().map(|(n, _)| n).filter(|n| !set.contains(n)).collect();
    if !missing.is_empty() {
        return Err(Error::format(path, format!("missing tensors for {arch_name}: {}", missing.join(", "))));
    }
    model.check_finite().map_err(|e| Error::format(path, e.to_string()))?;
    let normalization = normalization.unwrap_or_else(|| Normalization::identity(input[0]));
    normalization.validate(input[0])?;
    let info = ModelInfo { arch: arch_name.into(), data_kind: None, classes: (0..classes).map(|c| c.to_string()).collect(), normalization, backdoor: None, extra: Default::default(), onnx: None };
    Ok(ModelFile { model, info })
}
