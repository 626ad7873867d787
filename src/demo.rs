//! `fineprune demo`: the whole core pipeline on the built-in synthetic sign set, with no
//! downloads and no paths: generate data, train, evaluate, save the model and a JSON report.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::{DataSpec, Dataset, Kind, LoadOptions};
use crate::error::Result;
use crate::metrics::{ClassReport, evaluate};
use crate::train::{EpochStats, Progress, TrainConfig, train_new};

#[derive(Serialize)]
pub struct DemoResult {
    pub model: PathBuf,
    pub report: PathBuf,
    pub arch: String,
    pub train_samples: usize,
    pub test: ClassReport,
    pub classes: Vec<String>,
    pub history: Vec<EpochStats>,
    pub seconds: f64,
}

pub fn run(out_dir: &Path, seed: u64, progress: &mut dyn Progress) -> Result<DemoResult> {
    let start = std::time::Instant::now();
    std::fs::create_dir_all(out_dir).map_err(|e| crate::Error::io(out_dir, e))?;
    let spec = DataSpec { kind: Kind::Synthetic, path: "builtin".into() };
    let ds = Dataset::load(&spec, &LoadOptions { seed, ..Default::default() })?;
    let cfg = TrainConfig { epochs: 3, seed, ..TrainConfig::default() };
    let device = crate::cpu_device();
    let trained = train_new("signnet", &ds, &cfg, &device.clone().autodiff(), progress)?;
    let model = out_dir.join("model.safetensors");
    trained.file.save(&model)?;
    let test = evaluate(&trained.file, &ds.test, &device)?;
    let report = out_dir.join("results.json");
    let result = DemoResult {
        model,
        report: report.clone(),
        arch: "signnet".into(),
        train_samples: ds.train.len(),
        test,
        classes: ds.classes.clone(),
        history: trained.history,
        seconds: start.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&result).expect("result serialises");
    crate::fsutil::write_atomic(&report, &json)?;
    Ok(result)
}
