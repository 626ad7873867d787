use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use fineprune::data::{DataSpec, Dataset, LoadOptions};
use fineprune::metrics::{ClassReport, evaluate};
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
    /// Evaluate a saved model on a dataset split.
    Eval(EvalArgs),
    /// Measure training and inference throughput (images/s) on this machine.
    Bench(BenchArgs),
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
    /// Fraction of the train split held out for validation (by track for gtsrb).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Seed of the validation split.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
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
    /// Print one JSON object on stdout instead of human-readable text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// Dataset as KIND:PATH.
    #[arg(long)]
    data: String,
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Fewer iterations (for a smoke run).
    #[arg(long)]
    quick: bool,
    /// Measure these architectures instead of the default lenet and resnet18.
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
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
        Command::Bench(a) => fineprune_bench(a),
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
    let ds = load_data(&a.data.data, a.data.resize, a.data.val_fraction, a.data.split_seed)?;
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        optimizer: a.optimizer,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        schedule: a.schedule,
        seed: a.seed,
        patience: a.patience,
    };
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

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let start = Instant::now();
    let device = fineprune::cpu_device();
    let file = ModelFile::load(&a.model, &device).with_context(|| format!("loading model {}", a.model.display()))?;
    let [c, h, w] = file.model.graph.input_shape;
    let spec: DataSpec = a.data.parse()?;
    if let Some(kind) = file.info.data_kind
        && kind != spec.kind
    {
        bail!("the model was trained on {} data, not {}", kind.name(), spec.kind.name());
    }
    let ds = load_data(&a.data, Some((h, w)), a.val_fraction, a.split_seed)?;
    if ds.shape[0] != c || ds.classes.len() != file.info.classes.len() {
        bail!(
            "the model expects {c} channels and {} classes; {} has {} channels and {} classes",
            file.info.classes.len(),
            spec,
            ds.shape[0],
            ds.classes.len()
        );
    }
    let split = ds.split(&a.split)?;
    let report = evaluate(&file, split, &device)?;
    let seconds = start.elapsed().as_secs_f64();
    if a.json {
        let out = json!({
            "model": a.model,
            "split": a.split,
            "clean_accuracy": report.accuracy,
            "per_class_accuracy": report.per_class_accuracy,
            "confusion_matrix": report.confusion,
            "samples": report.samples,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_report(&report, &file.info.classes, &a.split, seconds);
    }
    Ok(())
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
    let results = if a.arch.is_empty() {
        fineprune::bench::throughput(&device, a.quick)?
    } else {
        let steps = if a.quick { 1 } else { 5 };
        a.arch.iter().map(|name| fineprune::bench::measure(name, 64, steps, &device)).collect::<fineprune::Result<_>>()?
    };
    println!("throughput on {} cores (Flex CPU backend)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("{:<12} {:>16} {:>16}", "arch", "train img/s", "inference img/s");
    for r in results {
        println!("{:<12} {:>16.1} {:>16.1}", r.arch, r.train_images_per_sec, r.inference_images_per_sec);
    }
    Ok(())
}
