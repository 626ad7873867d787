//! The command line: one module per subcommand, over the library. Parsing, progress display
//! and output formatting only; no logic of its own.

use anyhow::Result;
use clap::{Parser, Subcommand};

use fineprune::model::arch;

#[derive(Parser)]
#[command(name = "fineprune", version, about = "Find and remove backdoors in neural networks (Fine-Pruning, RAID 2018)")]
struct Cli {
    /// Where tensors live: cpu (default), wgpu (Vulkan/Metal/DX12) or cuda[:N]; the GPU ones
    /// need a build with `--features wgpu` or `--features cuda`.
    #[arg(long, global = true, default_value = "cpu")]
    device: fineprune::device::DeviceSpec,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on a dataset and save it (safetensors, with its metadata).
    Train(TrainArgs),
    /// Evaluate a saved model on a dataset split (and its backdoor, if it carries one).
    Eval(EvalArgs),
    /// Train a backdoored model (BadNets patch, blend, SIG, WaNet, Adap-Blend, sunglasses, tone; pruning-aware).
    Attack(AttackArgs),
    /// Trigger tools.
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Mean activation of each channel of the last conv layer, clean vs triggered.
    Inspect(InspectArgs),
    /// Is this model backdoored? Reconstruct triggers from clean data, name the target class.
    Scan(ScanArgs),
    /// Remove a backdoor: the paper's prune, finetune, fineprune; anp, fst, anp+fst; unlearn; or auto (all, checked by scans).
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
    /// Print a shell completion script, e.g. `fineprune completions bash > ~/.local/share/bash-completion/completions/fineprune`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `fineprune man > fineprune.1 && man ./fineprune.1`.
    Man,
}

mod args;
mod choice;
mod progress;
mod train;
mod eval;
mod attack;
mod trigger;
mod inspect;
mod defend;
mod scan;
mod reproduce;
mod convert;
mod bench;
mod demo;

use attack::{AttackArgs, cmd_attack};
use bench::{BenchArgs, fineprune_bench};
use convert::{ConvertArgs, cmd_convert};
use defend::{DefendArgs, cmd_defend};
use demo::{DemoArgs, cmd_demo};
use eval::{EvalArgs, cmd_eval};
use inspect::{InspectArgs, cmd_inspect};
use reproduce::{ReproduceArgs, cmd_reproduce};
use scan::{ScanArgs, cmd_scan};
use train::{TrainArgs, cmd_train};
use trigger::{TriggerCommand, cmd_apply, cmd_preview};

/// A failure that is not an error message: the process exits with this status, having said why
/// on its output already.
#[derive(Debug)]
pub struct Exit(pub u8);

impl Exit {
    /// `defend`: the result is outside the clean-accuracy budget (not a repair).
    pub const OUT_OF_BUDGET: Exit = Exit(3);
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let device = || fineprune::device::open(cli.device);
    // On a GPU, a failed kernel or allocation deep in a command is one error line, not a panic.
    fineprune::device::guard(cli.device, move || run_command(cli.command, device))?
}

fn run_command(command: Command, device: impl Fn() -> fineprune::Result<burn::tensor::Device>) -> Result<()> {
    match command {
        Command::Train(a) => cmd_train(a, &device()?),
        Command::Eval(a) => cmd_eval(a, &device()?),
        Command::Attack(a) => cmd_attack(a, &device()?),
        Command::Trigger(TriggerCommand::Preview(a)) => cmd_preview(a),
        Command::Trigger(TriggerCommand::Apply(a)) => cmd_apply(a),
        Command::Inspect(a) => cmd_inspect(a, &device()?),
        Command::Scan(a) => cmd_scan(a, &device()?),
        Command::Defend(a) => cmd_defend(a, &device()?),
        Command::Reproduce(a) => cmd_reproduce(a, &device()?),
        Command::Bench(a) => fineprune_bench(a, &device()?),
        Command::Demo(a) => cmd_demo(a, &device()?),
        Command::Convert(a) => cmd_convert(a, &device()?),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "fineprune", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Archs => {
            for (name, input, about) in arch::ARCHITECTURES {
                println!("{name:<12} {}x{}x{}  {about}", input[0], input[1], input[2]);
            }
            Ok(())
        }
    }
}
