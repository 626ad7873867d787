//! Arguments shared by several commands (model, data, splits, training, triggers) and the
//! loading they drive: a model and the data it is run on, checked against each other.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use anyhow::{Context, Result};
use clap::Args;

use fineprune::data::{DataSpec, Dataset, Layout, LoadOptions};
use fineprune::trigger::poison::Target;
use fineprune::trigger::Triggered;
use fineprune::model::ModelFile;
use fineprune::train::{OptimizerKind, Schedule, TrainConfig};
use fineprune::trigger::spec as trigger_spec;

use super::choice::ChoiceParser;

#[derive(Args)]
pub(super) struct DataArgs {
    /// Dataset as KIND:PATH: mnist, gtsrb, fsdd, orl, synthetic, folder (ImageFolder tree), npz
    /// (A.npz or X.npy,Y.npy), cifar10, cifar100.
    #[arg(long)]
    pub(super) data: String,
    /// Sample size HxW (default: the dataset kind's own, e.g. 32x32 for gtsrb; for folders the
    /// first image's, for arrays their own).
    #[arg(long, value_parser = parse_size)]
    pub(super) resize: Option<(usize, usize)>,
    #[command(flatten)]
    pub(super) split: SplitArgs,
}

impl DataArgs {
    /// The dataset, split and sized as the flags say.
    pub(super) fn load(&self) -> Result<Dataset> {
        load_data(&self.data, &self.split.options(self.resize))
    }
}

/// How the validation split is carved from the training set.
#[derive(Args)]
pub(super) struct SplitArgs {
    /// Fraction of the train split held out for validation (by track for gtsrb).
    #[arg(long, default_value_t = 0.1)]
    pub(super) val_fraction: f64,
    /// Seed of the validation split (and of the test split carved from data that has none).
    #[arg(long, default_value_t = 0)]
    pub(super) split_seed: u64,
    /// npz data: layout of x (default: inferred from its shape and the model's channels).
    #[arg(long, value_parser = ChoiceParser::<Layout>::new())]
    pub(super) layout: Option<Layout>,
}

impl Default for SplitArgs {
    fn default() -> Self {
        SplitArgs { val_fraction: 0.1, split_seed: 0, layout: None }
    }
}

impl SplitArgs {
    pub(super) fn options(&self, size: Option<(usize, usize)>) -> LoadOptions {
        LoadOptions { size, val_fraction: self.val_fraction, seed: self.split_seed, layout: self.layout, ..LoadOptions::default() }
    }
}

/// Where a model comes from: a fineprune model file, an ONNX file, or a PyTorch state dict of
/// a built-in architecture; plus what an imported model needs and the limits on hostile files.
#[derive(Args)]
pub(super) struct ModelArgs {
    /// Model file: a fineprune .safetensors or an .onnx (normalisation from MODEL.toml beside it).
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    pub(super) model: Option<PathBuf>,
    /// A PyTorch state dict saved with safetensors, for the architecture given by --arch.
    #[arg(long, requires = "arch")]
    pub(super) weights: Option<PathBuf>,
    /// Architecture of --weights (see `fineprune archs`).
    #[arg(long)]
    pub(super) arch: Option<String>,
    /// Per-channel input mean the model expects, e.g. 0.485,0.456,0.406 (overrides MODEL.toml).
    #[arg(long, value_delimiter = ',', requires = "std")]
    pub(super) mean: Vec<f32>,
    /// Per-channel input std the model expects.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub(super) std: Vec<f32>,
    /// Load a model with NaN or infinite weights instead of refusing it.
    #[arg(long)]
    pub(super) allow_non_finite: bool,
    /// Largest total tensor size accepted from an ONNX file, in bytes; the file itself may be
    /// 16 MiB more (default: a quarter of the available memory, at most 4 GiB).
    #[arg(long)]
    pub(super) max_model_bytes: Option<u64>,
    /// Most elements in any one tensor of an ONNX file.
    #[arg(long)]
    pub(super) max_tensor_elements: Option<usize>,
}

impl ModelArgs {
    /// Whether the model comes from outside fineprune (ONNX or a state dict), so its input
    /// normalisation is what the user said rather than what training recorded.
    pub(super) fn imported(&self) -> bool {
        self.weights.is_some() || self.model.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "onnx"))
    }

    /// The path the model was named by (for messages).
    pub(super) fn path(&self) -> &std::path::Path {
        self.model.as_deref().or(self.weights.as_deref()).expect("clap requires one")
    }

    pub(super) fn load(&self, device: &Device) -> Result<ModelFile> {
        let cli_norm = (!self.mean.is_empty()).then(|| fineprune::data::Normalization { mean: self.mean.clone(), std: self.std.clone() });
        let file = match (&self.model, &self.weights) {
            (Some(path), _) => {
                let onnx = path.extension().is_some_and(|e| e == "onnx");
                let mut opts = fineprune::model::onnx::ImportOptions::default();
                if let Some(b) = self.max_model_bytes {
                    opts.limits.max_total_bytes = b;
                    opts.limits.max_file_bytes = fineprune::model::onnx::file_bound(b);
                }
                if let Some(n) = self.max_tensor_elements {
                    opts.limits.max_tensor_elements = n;
                }
                opts.limits.allow_non_finite = self.allow_non_finite;
                if onnx {
                    opts.sidecar = fineprune::model::onnx::Sidecar::beside(path)?.unwrap_or_default();
                }
                if let Some(n) = &cli_norm {
                    opts.sidecar.mean = Some(n.mean.clone());
                    opts.sidecar.std = Some(n.std.clone());
                }
                // Say which input scaling is assumed when nothing says which one the model wants.
                if onnx && opts.sidecar.mean.is_none() {
                    eprintln!(
                        "note: {}: no --mean/--std and no {} beside it, so inputs reach the model as read, scaled to [0, 1], \
                         without normalisation",
                        path.display(),
                        path.with_extension("toml").file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                    );
                }
                let mut file = fineprune::model::store::load(path, &opts, device)?;
                if let Some(n) = cli_norm.filter(|_| !onnx) {
                    n.validate(file.model.graph.input_shape[0])?;
                    file.info.normalization = n;
                }
                file
            }
            (None, Some(weights)) => fineprune::model::store::from_state_dict(self.arch.as_deref().expect("clap requires --arch"), weights, None, cli_norm, device)?,
            (None, None) => unreachable!("clap requires --model or --weights"),
        };
        Ok(file)
    }
}

#[derive(Args)]
pub(super) struct TrainOpts {
    /// Training epochs.
    #[arg(long, default_value_t = 10)]
    pub(super) epochs: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub(super) lr: f64,
    /// Samples per training step.
    #[arg(long, default_value_t = 64)]
    pub(super) batch_size: usize,
    /// Optimiser.
    #[arg(long, value_parser = ChoiceParser::<OptimizerKind>::new(), default_value = "adam")]
    pub(super) optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub(super) momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub(super) weight_decay: f64,
    /// Learning-rate schedule: constant, cosine, or step:EVERY:GAMMA (e.g. step:5:0.1).
    #[arg(long, default_value = "constant", value_parser = parse_schedule)]
    pub(super) schedule: Schedule,
    /// Stop after this many epochs without a better validation accuracy.
    #[arg(long)]
    pub(super) patience: Option<usize>,
    /// Seed of initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub(super) seed: u64,
}

impl TrainOpts {
    pub(super) fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: self.optimizer,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule: self.schedule,
            seed: self.seed,
            patience: self.patience,
        }
    }
}

#[derive(Args)]
pub(super) struct TriggerArgs {
    /// Trigger spec, e.g. patch, patch:size=4,pos=top-left,color=yellow, blend:alpha=0.2,
    /// sig, wanet:k=4,s=0.5, dynamic, adaptive, sunglasses, tone:freq=3000,amp=0.3 (see the
    /// README).
    #[arg(long)]
    pub(super) trigger: Option<String>,
    /// Triggered inputs given as data (KIND:PATH, labelled with their true classes), made by
    /// any attack, instead of synthesising them with --trigger; needs --target.
    #[arg(long, conflicts_with = "trigger")]
    pub(super) asr_data: Option<String>,
    /// Attack target: a class number, all-to-all, or untargeted.
    #[arg(long)]
    pub(super) target: Option<String>,
    /// Count target-class test inputs in the targeted ASR too (the literal form; by default
    /// they are left out).
    #[arg(long)]
    pub(super) asr_include_target: bool,
}

pub(super) fn parse_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let (h, w) = s.split_once('x').ok_or("size must be HxW, e.g. 32x32")?;
    let h = h.parse().map_err(|_| format!("bad height {h:?}"))?;
    let w = w.parse().map_err(|_| format!("bad width {w:?}"))?;
    Ok((h, w))
}

pub(super) fn parse_schedule(s: &str) -> std::result::Result<Schedule, String> {
    match s {
        "constant" => Ok(Schedule::Constant),
        "cosine" => Ok(Schedule::Cosine),
        _ => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                ["step", every, gamma] => Ok(Schedule::Step {
                    every: every.parse().map_err(|_| format!("bad step interval {every:?}"))?,
                    gamma: gamma.parse().map_err(|_| format!("bad step factor {gamma:?}"))?,
                }),
                _ => Err(format!("unknown schedule {s:?}: use constant, cosine or step:EVERY:GAMMA")),
            }
        }
    }
}

fn load_data(spec: &str, opts: &LoadOptions) -> Result<Dataset> {
    let spec: DataSpec = spec.parse()?;
    let t = Instant::now();
    let ds = Dataset::load(&spec, opts).with_context(|| format!("loading dataset {spec}"))?;
    print_loaded(&spec, &ds, t);
    Ok(ds)
}

fn print_loaded(spec: &DataSpec, ds: &Dataset, t: Instant) {
    eprintln!(
        "loaded {spec}: {} train / {} val / {} test samples of {}x{}x{}, {} classes ({:.1}s)",
        ds.train.len(),
        ds.val.len(),
        ds.test.len(),
        ds.shape[0],
        ds.shape[1],
        ds.shape[2],
        ds.classes.len(),
        t.elapsed().as_secs_f64()
    );
}

/// Loads a model and the dataset it is evaluated on, checking that they fit each other. The
/// model defines the input normalisation (an imported model expects its own).
pub(super) fn load_model_and_data(m: &ModelArgs, data: &str, split: &SplitArgs, device: &Device) -> Result<(ModelFile, Dataset)> {
    let file = m.load(device).context("loading the model")?;
    let spec: DataSpec = data.parse()?;
    let t = Instant::now();
    let ds = file.load_data(&spec, &split.options(None)).with_context(|| format!("loading dataset {spec}"))?;
    print_loaded(&spec, &ds, t);
    // An imported model run with the wrong normalisation still runs, only worse: say so.
    if m.imported() {
        let split = if ds.val.is_empty() { &ds.test } else { &ds.val };
        if !split.is_empty()
            && let Some(w) = fineprune::metrics::normalization_check(&file, split, device)?.warning()
        {
            eprintln!("warning: {}: {w}", m.path().display());
        }
    }
    Ok((file, ds))
}

/// The triggered inputs and target to evaluate: `--asr-data` (inputs given), else `--trigger`,
/// else the model file's own trigger.
pub(super) fn resolve_backdoor(file: &ModelFile, trigger: Option<&str>, asr_data: Option<&str>, target: Option<&str>, layout: Option<Layout>) -> Result<Option<(Triggered, Option<Target>)>> {
    let carried = file.info.backdoor.as_ref();
    let triggered = match (asr_data, trigger) {
        (Some(data), _) => Some(load_triggered(file, data, layout)?),
        (None, Some(t)) => Some(Triggered::Synthesised(trigger_spec::parse(t)?)),
        (None, None) => carried.map(|b| Triggered::Synthesised(b.trigger.clone())),
    };
    let target = match target {
        Some(t) => Some(t.parse::<Target>()?),
        None if asr_data.is_none() => carried.map(|b| b.target),
        None => None,
    };
    Ok(triggered.map(|t| (t, target)))
}

/// A set of triggered inputs given as data (every split of it), in the model's input shape,
/// labelled with their true classes.
fn load_triggered(file: &ModelFile, data: &str, layout: Option<Layout>) -> Result<Triggered> {
    let spec: DataSpec = data.parse()?;
    let triggered = file.load_triggered(&spec, layout).with_context(|| format!("loading the triggered inputs {spec}"))?;
    if let Triggered::Given { inputs, .. } = &triggered {
        eprintln!("triggered inputs {spec}: {} samples", inputs.len());
    }
    Ok(triggered)
}

/// `--layer` as the graph names it: an imported model's ONNX node names are accepted too.
pub(super) fn layer_name(file: &ModelFile, layer: Option<&str>) -> Option<String> {
    let layer = layer?;
    let alias = file.info.onnx.as_ref().and_then(|io| io.node_names.get(layer));
    Some(alias.cloned().unwrap_or_else(|| layer.to_string()))
}

