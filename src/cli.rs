use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use fineprune::data::{DataSpec, Dataset, LoadOptions};
use fineprune::attack::{AttackConfig, AttackEval, PruningAwareConfig, backdoor, evaluate_attack, pruning_aware};
use fineprune::defense::{DefenseConfig, KnownAttack, Method, StopRule, defend};
use fineprune::metrics::{ClassReport, evaluate};
use fineprune::trigger::poison::Target;
use fineprune::trigger::{Trigger, Use, spec as trigger_spec};
use fineprune::model::{ModelFile, arch};
use fineprune::train::{EpochStats, OptimizerKind, Progress, Schedule, TrainConfig, train_new};

#[derive(Parser)]
#[command(name = "fineprune", version, about = "Find and remove backdoors in neural networks (Fine-Pruning, RAID 2018)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a dataset and save it (safetensors, with its metadata).
    Train(TrainArgs),
    /// Evaluate a saved model on a dataset split (and its backdoor, if it carries one).
    Eval(EvalArgs),
    /// Train a backdoored model (BadNets patch, blend, sunglasses, tone; pruning-aware).
    Attack(AttackArgs),
    /// Trigger tools.
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Mean activation of each channel of the last conv layer, clean vs triggered.
    Inspect(InspectArgs),
    /// Remove a backdoor: prune, finetune or fineprune (the paper's defenses).
    Defend(DefendArgs),
    /// Run the paper's protocol for one task and write results.json and report.html.
    Reproduce(ReproduceArgs),
    /// Measure training and inference throughput (images/s) on this machine.
    Bench(BenchArgs),
    /// Run the pipeline end to end on a built-in synthetic dataset (no downloads, no paths).
    Demo(DemoArgs),
    /// Convert a model between .onnx and .safetensors (also a PyTorch state dict with
    /// --weights and --arch); masked channels are removed unless --keep-shape.
    Convert(ConvertArgs),
    /// List the built-in architectures.
    Archs,
}

#[derive(Args)]
struct DataArgs {
    /// Dataset as KIND:PATH, KIND one of mnist, gtsrb, fsdd, orl.
    #[arg(long)]
    data: String,
    /// Sample size HxW (default: the dataset kind's own, e.g. 32x32 for gtsrb).
    #[arg(long, value_parser = parse_size)]
    resize: Option<(usize, usize)>,
    #[command(flatten)]
    split: SplitArgs,
}

/// How the validation split is carved from the training set.
#[derive(Args)]
struct SplitArgs {
    /// Fraction of the train split held out for validation (by track for gtsrb).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Seed of the validation split.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
}

impl Default for SplitArgs {
    fn default() -> Self {
        SplitArgs { val_fraction: 0.1, split_seed: 0 }
    }
}

/// Where a model comes from: a fineprune model file, an ONNX file, or a PyTorch state dict of
/// a built-in architecture; plus what an imported model needs and the limits on hostile files.
#[derive(Args)]
struct ModelArgs {
    /// Model file: a fineprune .safetensors or an .onnx (normalisation from MODEL.toml beside it).
    #[arg(long, required_unless_present = "weights", conflicts_with = "weights")]
    model: Option<PathBuf>,
    /// A PyTorch state dict saved with safetensors, for the architecture given by --arch.
    #[arg(long, requires = "arch")]
    weights: Option<PathBuf>,
    /// Architecture of --weights (see `fineprune archs`).
    #[arg(long)]
    arch: Option<String>,
    /// Per-channel input mean the model expects, e.g. 0.485,0.456,0.406 (overrides MODEL.toml).
    #[arg(long, value_delimiter = ',', requires = "std")]
    mean: Vec<f32>,
    /// Per-channel input std the model expects.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Vec<f32>,
    /// Load a model with NaN or infinite weights instead of refusing it.
    #[arg(long)]
    allow_non_finite: bool,
    /// Largest total tensor size accepted from an ONNX file, in bytes; the file itself may be
    /// 16 MiB more (default: a quarter of the available memory, at most 4 GiB).
    #[arg(long)]
    max_model_bytes: Option<u64>,
    /// Most elements in any one tensor of an ONNX file.
    #[arg(long)]
    max_tensor_elements: Option<usize>,
}

impl ModelArgs {
    /// The path the model was named by (for messages).
    fn path(&self) -> &std::path::Path {
        self.model.as_deref().or(self.weights.as_deref()).expect("clap requires one")
    }

    fn load(&self) -> Result<ModelFile> {
        let device = fineprune::cpu_device();
        let cli_norm = (!self.mean.is_empty()).then(|| fineprune::data::Normalization { mean: self.mean.clone(), std: self.std.clone() });
        let file = match (&self.model, &self.weights) {
            (Some(path), _) => {
                let mut opts = fineprune::model::onnx::ImportOptions::default();
                if let Some(b) = self.max_model_bytes {
                    opts.limits.max_total_bytes = b;
                    opts.limits.max_file_bytes = fineprune::model::onnx::file_bound(b);
                }
                if let Some(n) = self.max_tensor_elements {
                    opts.limits.max_tensor_elements = n;
                }
                opts.limits.allow_non_finite = self.allow_non_finite;
                if path.extension().is_some_and(|e| e == "onnx") {
                    opts.sidecar = fineprune::model::onnx::Sidecar::beside(path)?.unwrap_or_default();
                }
                if let Some(n) = &cli_norm {
                    opts.sidecar.mean = Some(n.mean.clone());
                    opts.sidecar.std = Some(n.std.clone());
                }
                let mut file = fineprune::model::store::load(path, &opts, &device)?;
                if let Some(n) = cli_norm.filter(|_| !path.extension().is_some_and(|e| e == "onnx")) {
                    n.validate(file.model.graph.input_shape[0])?;
                    file.info.normalization = n;
                }
                file
            }
            (None, Some(weights)) => fineprune::model::store::from_state_dict(self.arch.as_deref().expect("clap requires --arch"), weights, None, cli_norm, &device)?,
            (None, None) => unreachable!("clap requires --model or --weights"),
        };
        Ok(file)
    }
}

#[derive(Args)]
struct TrainOpts {
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Learning-rate schedule: constant, cosine, or step:EVERY:GAMMA (e.g. step:5:0.1).
    #[arg(long, default_value = "constant", value_parser = parse_schedule)]
    schedule: Schedule,
    /// Stop after this many epochs without a better validation accuracy.
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl TrainOpts {
    fn config(&self) -> TrainConfig {
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
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture (see `fineprune archs`).
    #[arg(long)]
    arch: String,
    /// Output model file (.safetensors), written atomically.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    opts: TrainOpts,
    /// Print one JSON object on stdout instead of human-readable text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TriggerArgs {
    /// Trigger spec, e.g. patch, patch:size=4,pos=top-left,color=yellow, blend:alpha=0.2,
    /// sunglasses, tone:freq=3000,amp=0.3 (see the README).
    #[arg(long)]
    trigger: Option<String>,
    /// Attack target: a class number, all-to-all, or untargeted.
    #[arg(long)]
    target: Option<String>,
    /// Count target-class test inputs in the targeted ASR too (the literal form; by default
    /// they are left out).
    #[arg(long)]
    asr_include_target: bool,
}

#[derive(Args)]
struct AttackArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long)]
    arch: String,
    #[arg(long)]
    out: PathBuf,
    /// Trigger spec (see the README).
    #[arg(long, default_value = "patch")]
    trigger: String,
    /// A class number, all-to-all, or untargeted.
    #[arg(long, default_value = "0")]
    target: String,
    #[arg(long, default_value_t = 0.1)]
    poison_rate: f64,
    #[arg(long, default_value_t = 0)]
    poison_seed: u64,
    /// The paper's pruning-aware attack: train clean, prune dormant channels, retrain on poison,
    /// re-instate the pruned channels as dormant decoys.
    #[arg(long)]
    pruning_aware: bool,
    /// Pruning-aware: fraction of the layer to prune (default: as many as keep clean
    /// validation accuracy within --max-acc-drop).
    #[arg(long)]
    prune_fraction: Option<f64>,
    #[arg(long, default_value_t = 0.04)]
    max_acc_drop: f64,
    /// Pruning-aware: layer to prune (default: the architecture's last conv layer).
    #[arg(long)]
    layer: Option<String>,
    #[arg(long)]
    asr_include_target: bool,
    #[command(flatten)]
    opts: TrainOpts,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DefendArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    data: String,
    #[arg(long, value_enum, default_value_t = Method::Fineprune)]
    method: Method,
    #[arg(long)]
    out: PathBuf,
    /// Stop pruning when clean validation accuracy drops by more than this (absolute points
    /// unless --relative; the paper's 4%).
    #[arg(long, default_value_t = 0.04)]
    max_acc_drop: f64,
    #[arg(long)]
    relative: bool,
    /// Prune this fraction of the layer instead.
    #[arg(long, conflicts_with = "prune_count")]
    prune_fraction: Option<f64>,
    /// Prune this many channels instead.
    #[arg(long)]
    prune_count: Option<usize>,
    /// Layer to prune (default: the last convolutional layer).
    #[arg(long)]
    layer: Option<String>,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Fine-tuning learning rate (Adam; 10x below the training default).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Fraction of the train split the defender has as clean data.
    #[arg(long, default_value_t = 1.0)]
    clean_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    split: SplitArgs,
    #[command(flatten)]
    attack: TriggerArgs,
    /// Keep the layer's shape (pruned channels masked to zero) instead of removing them.
    #[arg(long)]
    keep_shape: bool,
    /// Write curve.csv, curve.svg and result.json here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReproduceArgs {
    #[arg(long, value_enum)]
    task: fineprune::reproduce::Task,
    #[arg(long, default_value = "../shared/data")]
    data_root: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Fewer epochs and less data (minutes, for tests and a first look).
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
enum TriggerCommand {
    /// Write clean and triggered samples side by side as a PNG grid.
    Preview(PreviewArgs),
}

#[derive(Args)]
struct PreviewArgs {
    #[arg(long)]
    data: String,
    #[arg(long)]
    trigger: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 8)]
    count: usize,
    #[arg(long, value_parser = parse_size)]
    resize: Option<(usize, usize)>,
}

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset as KIND:PATH; without it, the model's layers are listed.
    #[arg(long)]
    data: Option<String>,
    /// Trigger to compare against (default: the model's own, if it carries one).
    #[arg(long)]
    trigger: Option<String>,
    /// Layer to inspect (default: the last convolutional layer).
    #[arg(long)]
    layer: Option<String>,
    #[arg(long, default_value = "val")]
    split: String,
    /// Write the activation plot here (.svg).
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Dataset as KIND:PATH.
    #[arg(long)]
    data: String,
    #[arg(long, default_value = "test")]
    split: String,
    #[command(flatten)]
    carve: SplitArgs,
    #[command(flatten)]
    attack: TriggerArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output: .onnx (opset 13, weights embedded) or .safetensors; written atomically.
    #[arg(long)]
    out: PathBuf,
    /// Keep pruned channels as zeroed channels instead of removing them.
    #[arg(long)]
    keep_shape: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Folder for the models and the report.
    #[arg(long, default_value = "fineprune-demo")]
    out: PathBuf,
    /// Architecture to backdoor (any that accepts 32x32 colour input). LeNet by default: like
    /// the paper's networks it has no BatchNorm, which keeps every channel active (see README).
    #[arg(long, default_value = "lenet")]
    arch: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct BenchArgs {
    /// Fewer iterations (for a smoke run).
    #[arg(long)]
    quick: bool,
    /// Measure these architectures instead of the default lenet and resnet18.
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Time the pruning sweep on this model (default: a fresh signnet on the built-in set).
    #[arg(long, requires = "data")]
    model: Option<PathBuf>,
    /// Data for the sweep benchmark, KIND:PATH.
    #[arg(long)]
    data: Option<String>,
    /// Samples of the validation split used by the sweep benchmark.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Skip the throughput table.
    #[arg(long)]
    sweep_only: bool,
}

fn parse_size(s: &str) -> std::result::Result<(usize, usize), String> {
    let (h, w) = s.split_once('x').ok_or("size must be HxW, e.g. 32x32")?;
    let h = h.parse().map_err(|_| format!("bad height {h:?}"))?;
    let w = w.parse().map_err(|_| format!("bad width {w:?}"))?;
    Ok((h, w))
}

fn parse_schedule(s: &str) -> std::result::Result<Schedule, String> {
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

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Attack(a) => cmd_attack(a),
        Command::Trigger(TriggerCommand::Preview(a)) => cmd_preview(a),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Defend(a) => cmd_defend(a),
        Command::Reproduce(a) => cmd_reproduce(a),
        Command::Bench(a) => fineprune_bench(a),
        Command::Demo(a) => cmd_demo(a),
        Command::Convert(a) => cmd_convert(a),
        Command::Archs => {
            for (name, input, about) in arch::ARCHITECTURES {
                println!("{name:<12} {}x{}x{}  {about}", input[0], input[1], input[2]);
            }
            Ok(())
        }
    }
}

fn load_data(spec: &str, size: Option<(usize, usize)>, val_fraction: f64, seed: u64) -> Result<Dataset> {
    let spec: DataSpec = spec.parse()?;
    let t = Instant::now();
    let opts = LoadOptions { size, val_fraction, seed };
    let ds = Dataset::load(&spec, &opts).with_context(|| format!("loading dataset {spec}"))?;
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
    Ok(ds)
}

/// Progress bars on stderr (hidden automatically when stderr is not a terminal).
struct Bars {
    bar: Option<ProgressBar>,
    epochs: usize,
    quiet: bool,
}

impl Progress for Bars {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64, acc: f64) {
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})").expect("valid template").progress_chars("=> "));
            b
        });
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.epochs));
        bar.set_position(done as u64);
        bar.set_message(format!("loss {loss:.4} acc {acc:.4}"));
    }

    fn epoch(&mut self, s: &EpochStats) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            eprintln!(
                "epoch {:>3}  lr {:.2e}  loss {:.4}  train acc {:.4}  val acc {:.4}  ({:.1}s)",
                s.epoch, s.lr, s.loss, s.train_accuracy, s.val_accuracy, s.seconds
            );
        }
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let start = Instant::now();
    let ds = load_data(&a.data.data, a.data.resize, a.data.split.val_fraction, a.data.split.split_seed)?;
    let cfg = a.opts.config();
    let device = fineprune::cpu_device();
    let mut bars = Bars { bar: None, epochs: cfg.epochs, quiet: false };
    let trained = train_new(&a.arch, &ds, &cfg, &device.clone().autodiff(), &mut bars)?;
    trained.file.save(&a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    let report = evaluate(&trained.file, &ds.test, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    if a.json {
        let out = json!({
            "model": a.out,
            "arch": a.arch,
            "best_epoch": trained.best_epoch,
            "best_val_accuracy": trained.best_val_accuracy,
            "clean_accuracy": report.accuracy,
            "per_class_accuracy": report.per_class_accuracy,
            "samples": report.samples,
            "seconds": seconds,
            "history": trained.history,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "saved {} (best epoch {}, val accuracy {:.4}); test accuracy {:.4} on {} samples; {:.1}s",
            a.out.display(),
            trained.best_epoch,
            trained.best_val_accuracy,
            report.accuracy,
            report.samples,
            seconds
        );
    }
    Ok(())
}

/// Loads a model and the dataset it is evaluated on, checking that they fit each other. The
/// model defines the input normalisation (an imported model expects its own).
fn load_model_and_data(m: &ModelArgs, data: &str, split: &SplitArgs) -> Result<(ModelFile, Dataset)> {
    let file = m.load().context("loading the model")?;
    let [c, h, w] = file.model.graph.input_shape;
    let spec: DataSpec = data.parse()?;
    if let Some(kind) = file.info.data_kind
        && kind != spec.kind
    {
        bail!("the model was trained on {} data, not {}", kind.name(), spec.kind.name());
    }
    let mut ds = load_data(data, Some((h, w)), split.val_fraction, split.split_seed)?;
    ds.normalization = file.info.normalization.clone();
    if ds.shape[0] != c || ds.classes.len() != file.info.classes.len() {
        bail!(
            "the model expects {c} channels and {} classes; {} has {} channels and {} classes",
            file.info.classes.len(),
            spec,
            ds.shape[0],
            ds.classes.len()
        );
    }
    Ok((file, ds))
}

/// The trigger and target to evaluate: from the command line, else from the model file.
fn resolve_backdoor(file: &ModelFile, trigger: Option<&str>, target: Option<&str>) -> Result<Option<(Trigger, Option<Target>)>> {
    let carried = file.info.backdoor.as_ref();
    let trigger = match trigger {
        Some(t) => Some(trigger_spec::parse(t)?),
        None => carried.map(|b| b.trigger.clone()),
    };
    let target = match target {
        Some(t) => Some(t.parse::<Target>()?),
        None => carried.map(|b| b.target),
    };
    Ok(trigger.map(|t| (t, target)))
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let start = Instant::now();
    let device = fineprune::cpu_device();
    let (file, ds) = load_model_and_data(&a.model, &a.data, &a.carve)?;
    let split = ds.split(&a.split)?;
    let backdoor = resolve_backdoor(&file, a.attack.trigger.as_deref(), a.attack.target.as_deref())?;
    let (report, asr) = match backdoor {
        Some((trigger, Some(target))) => {
            let e = evaluate_attack(&file, split, &trigger, target, a.attack.asr_include_target, &device)?;
            (e.clean.clone(), Some(e))
        }
        Some((_, None)) => bail!("--trigger needs --target (a class number, all-to-all or untargeted) to measure attack success"),
        None if a.attack.target.is_some() => bail!("--target needs --trigger"),
        None => (evaluate(&file, split, &device)?, None),
    };
    let seconds = start.elapsed().as_secs_f64();
    if a.json {
        let mut out = json!({
            "model": a.model.path(),
            "split": a.split,
            "clean_accuracy": report.accuracy,
            "per_class_accuracy": report.per_class_accuracy,
            "confusion_matrix": report.confusion,
            "samples": report.samples,
            "seconds": seconds,
        });
        if let Some(e) = &asr {
            out["attack_success_rate"] = json!(e.attack_success_rate.rate);
            out["attack_success_rate_ci95"] = json!(e.attack_success_rate.ci95);
            out["attack_samples"] = json!(e.attack_success_rate.samples);
            out["attack_convention"] = json!(e.attack_success_rate.convention);
            out["trigger"] = json!(e.trigger);
            out["target"] = json!(e.target);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&report, &file.info.classes, &a.split, seconds);
        if let Some(e) = &asr {
            print_asr(e);
        }
    }
    Ok(())
}

fn print_asr(e: &AttackEval) {
    let a = &e.attack_success_rate;
    println!(
        "attack success rate: {:.4} (95% CI {:.4}-{:.4}, {} triggered samples; trigger {}, target {})",
        a.rate, a.ci95[0], a.ci95[1], a.samples, e.trigger, e.target
    );
    println!("  convention: {}", a.convention);
}

fn cmd_attack(a: AttackArgs) -> Result<()> {
    let start = Instant::now();
    let ds = load_data(&a.data.data, a.data.resize, a.data.split.val_fraction, a.data.split.split_seed)?;
    let trigger = trigger_spec::parse(&a.trigger)?;
    let target: Target = a.target.parse()?;
    target.validate(ds.classes.len())?;
    let cfg = AttackConfig { trigger: trigger.clone(), target, poison_rate: a.poison_rate, poison_seed: a.poison_seed, train: a.opts.config() };
    let device = fineprune::cpu_device();
    let mut bars = Bars { bar: None, epochs: cfg.train.epochs, quiet: false };
    let trained = if a.pruning_aware {
        let pa = PruningAwareConfig { fraction: a.prune_fraction, max_acc_drop: a.max_acc_drop, layer: a.layer.clone(), ..Default::default() };
        eprintln!("pruning-aware attack: (a) clean training, (b) pruning dormant channels, (c) poisoned retraining, (d) re-instating decoys");
        pruning_aware(&a.arch, &ds, &cfg, &pa, &device.clone().autodiff(), &mut bars)?
    } else {
        backdoor(&a.arch, &ds, &cfg, &device.clone().autodiff(), &mut bars)?
    };
    trained.file.save(&a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    let e = evaluate_attack(&trained.file, &ds.test, &trigger, target, a.asr_include_target, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    let record = trained.file.info.backdoor.as_ref().expect("attacks record their backdoor");
    if a.json {
        let out = json!({
            "model": a.out,
            "arch": a.arch,
            "trigger": e.trigger,
            "target": e.target,
            "poison": record.poison,
            "pruning_aware": record.pruning_aware,
            "clean_accuracy": e.clean.accuracy,
            "per_class_accuracy": e.clean.per_class_accuracy,
            "attack_success_rate": e.attack_success_rate.rate,
            "attack_success_rate_ci95": e.attack_success_rate.ci95,
            "attack_samples": e.attack_success_rate.samples,
            "attack_convention": e.attack_success_rate.convention,
            "samples": e.clean.samples,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("saved {}: {} of {} training samples poisoned", a.out.display(), record.poison.count, record.poison.train_samples);
        if let Some(pa) = &record.pruning_aware {
            println!(
                "pruning-aware: {} of {} channels of {} re-instated as decoys (val accuracy {:.4} -> {:.4} when pruned)",
                pa.decoys.len(),
                pa.channels,
                pa.layer,
                pa.val_accuracy_before,
                pa.val_accuracy_pruned
            );
        }
        println!("test clean accuracy: {:.4} ({} samples, {:.1}s)", e.clean.accuracy, e.clean.samples, seconds);
        print_asr(&e);
    }
    Ok(())
}

fn cmd_preview(a: PreviewArgs) -> Result<()> {
    let ds = load_data(&a.data, a.resize, 0.1, 0)?;
    let trigger = trigger_spec::parse(&a.trigger)?;
    let n = a.count.clamp(1, 64).min(ds.test.len());
    let idx: Vec<usize> = (0..n).collect();
    let clean = ds.test.subset(&idx);
    let triggered = trigger.apply_split(&ds.test, Some(&idx), ds.shape, Use::Test, 1)?;
    let scale = (128 / ds.shape[1].max(ds.shape[2])).max(1);
    fineprune::report::grid::pairs_png(&clean, &triggered, ds.shape, n, scale, &a.out)?;
    println!("wrote {} ({n} clean | triggered pairs, trigger {})", a.out.display(), trigger.describe());
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> Result<()> {
    let device = fineprune::cpu_device();
    let Some(data) = a.data.as_deref() else {
        let file = a.model.load().context("loading the model")?;
        let g = &file.model.graph;
        let shapes = file.model.shapes();
        let site = fineprune::prune::find_site(&file.model, None).ok();
        let aliases: std::collections::HashMap<&str, &str> = file.info.onnx.iter().flat_map(|io| io.node_names.iter().map(|(k, v)| (v.as_str(), k.as_str()))).collect();
        println!("{} ({}): input {:?}, {} classes, {} parameters", a.model.path().display(), file.info.arch, g.input_shape, file.info.classes.len(), g.param_count());
        println!("candidate layers to prune (--layer takes the conv's or the activation's name):");
        for (conv, act) in fineprune::prune::candidate_sites(g) {
            let mark = if site.as_ref().is_some_and(|s| s.index == act || s.index == conv) { "  <- default prune site" } else { "" };
            let alias = aliases.get(g.nodes[conv].name.as_str()).map(|a| format!(" (ONNX node {a})")).unwrap_or_default();
            if let fineprune::model::Shape::Map([c, h, w]) = shapes[act] {
                println!("  {:<28} -> {:<28} {c} channels, {h}x{w}{alias}{mark}", g.nodes[conv].name, g.nodes[act].name);
            }
        }
        if let Some(s) = site.as_ref().filter(|s| !candidate_sites_contain(g, s.index)) {
            println!("default prune site: {} ({} channels): {}", s.name, s.channels, s.reason);
        }
        return Ok(());
    };
    let (file, ds) = load_model_and_data(&a.model, data, &SplitArgs::default())?;
    let site = fineprune::prune::find_site(&file.model, layer_name(&file, a.layer.as_deref()).as_deref())?;
    eprintln!("layer {} ({} channels): {}", site.name, site.channels, site.reason);
    let split = ds.split(&a.split)?;
    let clean = fineprune::prune::channel_means(&file.model, split, &ds.normalization, site.index, &device, 256)?;
    let triggered = match resolve_backdoor(&file, a.trigger.as_deref(), None)? {
        Some((trigger, _)) => {
            let t = trigger.apply_split(split, None, ds.shape, Use::Test, 1)?;
            Some((trigger.describe(), fineprune::prune::channel_means(&file.model, &t, &ds.normalization, site.index, &device, 256)?))
        }
        None => None,
    };
    let order = fineprune::prune::ranking(&clean);
    if let Some(path) = &a.plot {
        let chart = fineprune::report::activation_chart(&site.name, &order, &clean, triggered.as_ref().map(|t| t.1.as_slice()));
        fineprune::fsutil::write_atomic(path, chart.to_svg().as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    if a.json {
        let out = json!({
            "layer": site.name,
            "reason": site.reason,
            "order": order,
            "clean_mean_activation": clean,
            "triggered_mean_activation": triggered.as_ref().map(|t| &t.1),
            "trigger": triggered.as_ref().map(|t| &t.0),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("channels of {} by increasing mean clean activation ({} split):", site.name, a.split);
        println!("  {:>5} {:>8} {:>12} {:>12}", "rank", "channel", "clean", "triggered");
        for (rank, &c) in order.iter().enumerate() {
            let t = triggered.as_ref().map(|t| format!("{:12.4}", t.1[c])).unwrap_or_default();
            println!("  {rank:>5} {c:>8} {:12.4} {t}", clean[c]);
        }
    }
    Ok(())
}

fn cmd_defend(a: DefendArgs) -> Result<()> {
    let (file, ds) = load_model_and_data(&a.model, &a.data, &a.split)?;
    let known = match resolve_backdoor(&file, a.attack.trigger.as_deref(), a.attack.target.as_deref())? {
        Some((trigger, Some(target))) => Some(KnownAttack { trigger, target, include_target: a.attack.asr_include_target }),
        Some((_, None)) => bail!("--trigger needs --target to measure attack success"),
        None => None,
    };
    let stop = match (a.prune_fraction, a.prune_count) {
        (Some(fraction), _) => StopRule::Fraction { fraction },
        (_, Some(count)) => StopRule::Count { count },
        _ => StopRule::MaxAccDrop { drop: a.max_acc_drop, relative: a.relative },
    };
    let mut cfg = DefenseConfig::paper(a.method);
    cfg.stop = stop;
    cfg.layer = layer_name(&file, a.layer.as_deref());
    cfg.clean_fraction = a.clean_fraction;
    cfg.fold = !a.keep_shape;
    cfg.finetune = TrainConfig { epochs: a.epochs, lr: a.lr, batch_size: a.batch_size, seed: a.seed, ..cfg.finetune };
    let device = fineprune::cpu_device();
    let mut bars = Bars { bar: None, epochs: a.epochs, quiet: a.json };
    let outcome = defend(&file, &ds, &cfg, known.as_ref(), &device.clone().autodiff(), &mut bars)?;
    eprintln!("layer {} ({} channels): {}", outcome.layer, outcome.channels, outcome.layer_reason);
    fineprune::model::store::save(&outcome.model, &a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    if let Some(dir) = &a.report {
        fineprune::report::write_defense_report(dir, &outcome)?;
    }
    if a.json {
        let out = json!({
            "method": outcome.method,
            "model": a.out,
            "layer": outcome.layer,
            "pruned_channels": outcome.pruned_channels,
            "pruned_fraction": outcome.pruned_fraction,
            "before": {"clean_accuracy": outcome.before.clean_accuracy, "attack_success_rate": outcome.before.attack_success_rate, "attack_success_rate_ci95": outcome.before.attack_success_rate_ci95},
            "after": {"clean_accuracy": outcome.after.clean_accuracy, "attack_success_rate": outcome.after.attack_success_rate, "attack_success_rate_ci95": outcome.after.attack_success_rate_ci95},
            "attack_convention": outcome.attack_convention,
            "finetune_epochs": outcome.finetune_epochs,
            "folded": outcome.folded,
            "seconds": outcome.seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let asr = |s: &fineprune::defense::Snapshot| s.attack_success_rate.map(|r| format!(", attack success {r:.4}")).unwrap_or_default();
        println!("{:?} on {}: pruned {} of {} channels ({:.1}%), fine-tuned {} epochs, {:.1}s", outcome.method, outcome.layer, outcome.pruned_channels, outcome.channels, 100.0 * outcome.pruned_fraction, outcome.finetune_epochs, outcome.seconds);
        println!("  before: clean accuracy {:.4}{}", outcome.before.clean_accuracy, asr(&outcome.before));
        println!("  after:  clean accuracy {:.4}{}", outcome.after.clean_accuracy, asr(&outcome.after));
        let form = if outcome.folded { "pruned channels removed" } else { "pruned channels masked to zero" };
        println!("saved {} ({form})", a.out.display());
        if let Some(dir) = &a.report {
            println!("report: {}", dir.display());
        }
    }
    Ok(())
}

impl fineprune::reproduce::Stages for Bars {
    fn stage(&mut self, index: usize, total: usize, what: &str, eta: Option<f64>) {
        let eta = eta.map(|s| format!(" (about {:.0} min left)", (s / 60.0).ceil())).unwrap_or_default();
        eprintln!("==> [{index}/{total}] {what}{eta}");
    }
}

fn cmd_reproduce(a: ReproduceArgs) -> Result<()> {
    let mut bars = Bars { bar: None, epochs: 0, quiet: true };
    let r = fineprune::reproduce::run(a.task, &a.data_root, &a.out, a.quick, a.seed, &mut bars)?;
    let (json, html) = fineprune::reproduce::write(&a.out, &r)?;
    println!("{:<40} {:<12} {:>9} {:>9} {:>8}", "attack", "defense", "clean", "ASR", "pruned");
    for row in &r.rows {
        let asr = row.attack_success_rate.map(|v| format!("{v:.4}")).unwrap_or("-".into());
        let pf = row.pruned_fraction.map(|f| format!("{:.1}%", 100.0 * f)).unwrap_or("-".into());
        println!("{:<40} {:<12} {:>9.4} {:>9} {:>8}", row.attack, row.defense, row.clean_accuracy, asr, pf);
    }
    for f in &r.findings {
        println!("{f}");
    }
    println!("{:.0}s; wrote {} and {}", r.seconds, json.display(), html.display());
    Ok(())
}

fn cmd_convert(a: ConvertArgs) -> Result<()> {
    let mut file = a.model.load().context("loading the model")?;
    let mut removed = 0;
    if !a.keep_shape {
        // Fold every mask that can be folded (a model pruned with --keep-shape, or one imported
        // from an ONNX export with zeroed channels).
        while let Some(site) = file.model.graph.nodes.iter().find_map(|n| match &n.op {
            fineprune::model::Op::ChannelMask { keep } if keep.iter().any(|k| !k) => Some(n.inputs[0]),
            _ => None,
        }) {
            match fineprune::prune::fold::fold(&file.model, site) {
                Some(m) => {
                    removed += file.model.graph.param_count() - m.graph.param_count();
                    file.model = m;
                }
                None => break,
            }
        }
    }
    fineprune::model::store::save(&file, &a.out).with_context(|| format!("saving the model to {}", a.out.display()))?;
    let extra = if removed > 0 { format!(" ({removed} parameters of pruned channels removed)") } else { String::new() };
    println!("wrote {}{extra}", a.out.display());
    Ok(())
}

fn candidate_sites_contain(g: &fineprune::model::Graph, i: usize) -> bool {
    fineprune::prune::candidate_sites(g).iter().any(|&(c, a)| c == i || a == i)
}

/// `--layer` as the graph names it: an imported model's ONNX node names are accepted too.
fn layer_name(file: &ModelFile, layer: Option<&str>) -> Option<String> {
    let layer = layer?;
    let alias = file.info.onnx.as_ref().and_then(|io| io.node_names.get(layer));
    Some(alias.cloned().unwrap_or_else(|| layer.to_string()))
}

fn print_report(r: &ClassReport, classes: &[String], split: &str, seconds: f64) {
    println!("{split} accuracy: {:.4} ({} samples, {:.1}s)", r.accuracy, r.samples, seconds);
    println!("per-class accuracy:");
    for (name, acc) in classes.iter().zip(&r.per_class_accuracy) {
        match acc {
            Some(a) => println!("  {name:<36} {a:.4}"),
            None => println!("  {name:<36} (no samples)"),
        }
    }
    if classes.len() <= 20 {
        println!("confusion matrix (rows: true class, columns: predicted):");
        for (name, row) in classes.iter().zip(&r.confusion) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>5}")).collect();
            println!("  {name:>6} {}", cells.join(""));
        }
    }
}

fn fineprune_bench(a: BenchArgs) -> Result<()> {
    let device = fineprune::cpu_device();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if !a.sweep_only {
        let results = if a.arch.is_empty() {
            fineprune::bench::throughput(&device, a.quick)?
        } else {
            let steps = if a.quick { 1 } else { 5 };
            a.arch.iter().map(|name| fineprune::bench::measure(name, 64, steps, &device)).collect::<fineprune::Result<_>>()?
        };
        println!("throughput on {cores} cores (Flex CPU backend)");
        println!("{:<12} {:>16} {:>16}", "arch", "train img/s", "inference img/s");
        for r in results {
            println!("{:<12} {:>16.1} {:>16.1}", r.arch, r.train_images_per_sec, r.inference_images_per_sec);
        }
    }
    let (model, split, norm, what) = match (&a.model, &a.data) {
        (Some(m), Some(d)) => {
            let args = ModelArgs { model: Some(m.clone()), weights: None, arch: None, mean: vec![], std: vec![], allow_non_finite: false, max_model_bytes: None, max_tensor_elements: None };
            let (file, ds) = load_model_and_data(&args, d, &SplitArgs::default())?;
            let n = a.samples.min(ds.val.len());
            (file.model, ds.val.subset(&(0..n).collect::<Vec<_>>()), ds.normalization, format!("{} on {d}", m.display()))
        }
        _ => {
            let spec = DataSpec { kind: fineprune::data::Kind::Synthetic, path: "builtin".into() };
            let ds = Dataset::load(&spec, &LoadOptions::default())?;
            let g = arch::build("signnet", ds.shape, ds.classes.len())?;
            let n = a.samples.min(ds.train.len());
            (fineprune::model::Model::init(g, 0, &device)?, ds.train.subset(&(0..n).collect::<Vec<_>>()), ds.normalization, "a fresh signnet on the built-in set".to_string())
        }
    };
    let s = fineprune::bench::sweep(&model, &split, &norm, None, &device)?;
    println!("pruning sweep of {} ({} channels, every level 0..={}) over {} samples, {what}:", s.layer, s.channels, s.channels, s.samples);
    println!("  fast (prefix once + suffix/incremental): {:8.2}s", s.fast_seconds);
    println!("  naive (full network per level):          {:8.2}s", s.naive_seconds);
    println!("  ratio: {:.1}x; predictions that differ: {} of {}", s.ratio, s.disagreements, (s.channels + 1) * s.samples);
    Ok(())
}

impl fineprune::demo::Stages for Bars {
    fn stage(&mut self, what: &str) {
        eprintln!("==> {what}");
    }
}

fn cmd_demo(a: DemoArgs) -> Result<()> {
    eprintln!("fineprune demo: a backdoor planted and removed, on a built-in synthetic traffic-sign set");
    let mut bars = Bars { bar: None, epochs: 3, quiet: false };
    let r = fineprune::demo::run(&a.out, &a.arch, a.seed, &mut bars)?;
    let d = &r.defense;
    println!();
    println!("trigger {} -> class {} ({})", r.trigger, r.target, r.classes[r.target]);
    println!("{:<28} {:>15} {:>20}", "", "clean accuracy", "attack success rate");
    println!("{:<28} {:>15.4} {:>20.4}", "backdoored model", r.backdoored_clean_accuracy, r.backdoored_attack_success_rate);
    println!(
        "{:<28} {:>15.4} {:>20.4}",
        format!("after fine-pruning ({}/{} ch.)", d.pruned_channels, d.channels),
        d.after.clean_accuracy,
        d.after.attack_success_rate.unwrap_or(f64::NAN)
    );
    println!("(attack success: {})", d.attack_convention.as_deref().unwrap_or(""));
    println!();
    println!("{:.0}s. Everything is in {}/:", r.seconds, a.out.display());
    println!("  backdoored.safetensors, repaired.safetensors  the models (fineprune eval --model ...)");
    println!("  trigger-preview.png                          clean | triggered test images");
    println!("  activations.svg                              last conv layer, clean vs triggered");
    println!("  report/curve.svg, curve.csv, result.json     the pruning curve and the numbers");
    println!("  results.json                                 this summary");
    println!("The same on real data, e.g. traffic signs:");
    println!("  fineprune attack --data gtsrb:../shared/data/gtsrb --arch signnet --trigger patch:color=yellow --target 14 --epochs 5 --out sticker.safetensors");
    println!("  fineprune defend --model sticker.safetensors --data gtsrb:../shared/data/gtsrb --method fineprune --clean-fraction 0.2 --out repaired.safetensors --report report");
    Ok(())
}
