//! Progress of long work, reported to whoever runs it: the CLI draws bars (or plain lines in a
//! log) from these calls, tests and library callers pass [`Silent`]. Every stage of the
//! pipeline reports through it, so it depends on nothing.

use serde::Serialize;

/// One finished epoch of training.
#[derive(Clone, Debug, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f64,
    pub loss: f64,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
}

/// Called after every batch with (epoch, batch, batches, running loss, running accuracy) and
/// after every epoch with its stats: the CLI draws progress bars from it, tests pass a no-op.
pub trait Progress {
    fn batch(&mut self, _epoch: usize, _done: usize, _total: usize, _loss: f64, _acc: f64) {}
    fn epoch(&mut self, _stats: &EpochStats) {}
    /// Training of `epochs` epochs starts (bars and logs count epochs from here).
    fn training(&mut self, _epochs: usize) {}
    /// A phase of work that is not an epoch of training starts (`total` steps, reported through
    /// `batch` with epoch 0), e.g. "ANP: optimising neuron masks".
    fn phase(&mut self, _label: &str, _total: usize) {}
    /// Progress through the current phase's steps when there is no loss to show (caching a
    /// prefix, sweeping a curve, evaluating).
    fn work(&mut self, _done: usize, _total: usize) {}
    /// A plain statement for the user (a choice made, a budget missed).
    fn note(&mut self, _msg: &str) {}
}

pub struct Silent;
impl Progress for Silent {}
