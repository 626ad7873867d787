//! Progress on a terminal (bars with an estimate) or in a log (plain lines).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use fineprune::progress::{EpochStats, Progress};

/// How often a plain progress line is printed when stderr is not a terminal (logs, CI, nohup).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress on stderr: a bar on a terminal, a plain line every ten seconds otherwise, so a long
/// run is never silent.
pub(super) struct Bars {
    bar: Option<ProgressBar>,
    /// The current phase, when it is not an epoch of training.
    label: Option<String>,
    epochs: usize,
    /// No per-epoch lines (with --json; phases and notes still go to stderr).
    quiet: bool,
    tty: bool,
    phase_start: Instant,
    last_line: Instant,
}

impl Bars {
    pub(super) fn new(quiet: bool) -> Self {
        let now = Instant::now();
        Bars { bar: None, label: None, epochs: 0, quiet, tty: std::io::stderr().is_terminal(), phase_start: now, last_line: now }
    }

    fn prefix(&self, epoch: usize) -> String {
        match &self.label {
            Some(l) => l.clone(),
            None => format!("epoch {}/{}", epoch + 1, self.epochs),
        }
    }

    /// A step of a phase: the bar on a terminal, else a line every [`LOG_EVERY`] with an
    /// estimate of what is left.
    fn show(&mut self, prefix: String, done: usize, total: usize, msg: Option<String>) {
        if !self.tty {
            if self.last_line.elapsed() >= LOG_EVERY && done < total {
                let elapsed = self.phase_start.elapsed().as_secs_f64();
                let left = elapsed / done.max(1) as f64 * (total - done) as f64;
                let msg = msg.map(|m| format!(", {m}")).unwrap_or_default();
                eprintln!("  {prefix}: {done}/{total}{msg} ({elapsed:.0}s, about {left:.0}s left)");
                self.last_line = Instant::now();
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})").expect("valid template").progress_chars("=> "));
            b
        });
        bar.set_prefix(prefix);
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(msg.unwrap_or_default());
    }

    /// Removes the bar (before printing results).
    pub(super) fn clear(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bars {
    fn batch(&mut self, epoch: usize, done: usize, total: usize, loss: f64, acc: f64) {
        let prefix = self.prefix(epoch);
        self.show(prefix, done, total, Some(format!("loss {loss:.4} acc {acc:.4}")));
    }

    fn work(&mut self, done: usize, total: usize) {
        let prefix = self.label.clone().unwrap_or_default();
        self.show(prefix, done, total, None);
    }

    fn epoch(&mut self, s: &EpochStats) {
        self.clear();
        self.phase_start = Instant::now();
        if !self.quiet {
            eprintln!("epoch {:>3}  lr {:.2e}  loss {:.4}  train acc {:.4}  val acc {:.4}  ({:.1}s)", s.epoch, s.lr, s.loss, s.train_accuracy, s.val_accuracy, s.seconds);
        }
    }

    fn training(&mut self, epochs: usize) {
        self.clear();
        self.label = None;
        self.epochs = epochs;
        self.phase_start = Instant::now();
    }

    fn phase(&mut self, label: &str, total: usize) {
        self.clear();
        eprintln!("--> {label}");
        // A phase with steps labels its bar; one without (training) goes back to epochs.
        self.label = (total > 0).then(|| label.split(':').next().unwrap_or(label).to_string());
        let now = Instant::now();
        self.phase_start = now;
        self.last_line = now;
    }

    fn note(&mut self, msg: &str) {
        self.clear();
        eprintln!("note: {msg}");
    }
}

impl fineprune::reproduce::Stages for Bars {
    fn stage(&mut self, index: usize, total: usize, what: &str, eta: Option<f64>) {
        self.clear();
        let eta = eta.map(|s| format!(" (about {:.0} min left)", (s / 60.0).ceil())).unwrap_or_default();
        eprintln!("==> [{index}/{total}] {what}{eta}");
    }
}

impl fineprune::demo::Stages for Bars {
    fn stage(&mut self, what: &str) {
        self.clear();
        eprintln!("==> {what}");
    }
}
