//! Helpers shared by the fuzz targets: the CLI reads files, so most targets write the input to
//! a scratch file and call the same library function the CLI calls on a path.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::tensor::{Device, Tensor, TensorData};
use fineprune::model::ModelFile;

/// A per-process scratch folder (removed with the process's temp files by the OS; fuzzing
/// processes are short-lived).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fineprune-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

/// Writes `data` to `name` in the scratch folder and returns its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("scratch file");
    path
}

pub fn device() -> Device {
    fineprune::cpu_device()
}

/// One forward pass of a model that loaded, on zeros of its input shape, when that shape is
/// small: a model file that imports must also run (shape logic, kernels) without panicking.
pub fn forward_once(file: &ModelFile) {
    let [c, h, w] = file.model.graph.input_shape;
    if c.saturating_mul(h).saturating_mul(w) > 1 << 16 || file.model.graph.param_count() > 1 << 22 {
        return;
    }
    let x = Tensor::<4>::from_data(TensorData::new(vec![0f32; c * h * w], [1, c, h, w]), &device());
    let logits = file.model.forward(x);
    assert_eq!(logits.dims()[0], 1);
}

/// A panic inside onnx-ir or our importer is caught and reported as an error so the CLI never
/// goes down, but it is still a bug: here it is a finding.
pub fn no_caught_panic(err: &fineprune::Error) {
    if fineprune::model::onnx::is_caught_panic(err) {
        panic!("{err}");
    }
}
