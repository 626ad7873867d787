//! CIFAR-10 and CIFAR-100, the official binary versions: each record is the label byte(s) and
//! a 32×32 RGB image stored as three 1024-byte planes. CIFAR-10: `data_batch_1.bin` ..
//! `data_batch_5.bin` and `test_batch.bin` (names in `batches.meta.txt`); CIFAR-100:
//! `train.bin` and `test.bin` with a coarse then a fine label (the fine one is used; names in
//! `fine_label_names.txt`). The files may sit in PATH or in the archive's own sub-folder.

use std::path::{Path, PathBuf};

use super::{Loaded, Split, resize_planar};
use crate::error::{Error, Result};
use crate::fsutil::{DataRoot, DecodeBudget, read_bounded};

pub const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;
/// A CIFAR batch file is 30,730,000 bytes (CIFAR-100's train.bin 150,110,000).
const MAX_FILE: u64 = 200 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }

    /// Label bytes before each image.
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }

    fn files(self) -> (Vec<&'static str>, &'static str, &'static str) {
        match self {
            Variant::Cifar10 => (vec!["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"], "test_batch.bin", "batches.meta.txt"),
            Variant::Cifar100 => (vec!["train.bin"], "test.bin", "fine_label_names.txt"),
        }
    }

    fn subfolder(self) -> &'static str {
        match self {
            Variant::Cifar10 => "cifar-10-batches-bin",
            Variant::Cifar100 => "cifar-100-binary",
        }
    }
}

pub fn load(root: &DataRoot, variant: Variant, size: (usize, usize), budget: &mut DecodeBudget) -> Result<Loaded> {
    let (train_files, test_file, names_file) = variant.files();
    let base = root.path();
    let dir = if base.join(test_file).is_file() { base.to_path_buf() } else { base.join(variant.subfolder()) };
    if !dir.join(test_file).is_file() {
        return Err(Error::format(base, format!("no {test_file} here or in {}/", variant.subfolder())));
    }
    let sample_len = 3 * size.0 * size.1;
    // Every record of every file, counted from the files' sizes before any is read.
    let paths: Vec<PathBuf> = train_files.iter().chain(std::iter::once(&test_file)).map(|n| root.resolve(&dir.join(n))).collect::<Result<_>>()?;
    let mut records = 0usize;
    for p in &paths {
        let len = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
        records = records.saturating_add((len / (variant.label_bytes() + PIXELS) as u64) as usize);
    }
    budget.take(&dir, records, sample_len)?;
    let mut train = Split::new(sample_len);
    for p in &paths[..train_files.len()] {
        read_file(p, variant, size, &mut train)?;
    }
    let mut test = Split::new(sample_len);
    read_file(&paths[train_files.len()], variant, size, &mut test)?;
    let classes = root.resolve(&dir.join(names_file)).map(|p| class_names(&p, variant.classes())).unwrap_or_else(|_| (0..variant.classes()).map(|c| c.to_string()).collect());
    let train_groups = (0..train.len() as u64).collect();
    Ok(Loaded { channels: 3, classes, train, train_groups, val: None, test })
}

fn read_file(path: &Path, variant: Variant, size: (usize, usize), split: &mut Split) -> Result<()> {
    let bytes = read_bounded(path, MAX_FILE)?;
    parse(path, &bytes, variant, size, split)
}

/// Appends the records of one batch file's `bytes` (named `path` in errors) to `split`, each
/// image resized to `size`.
pub fn parse(path: &Path, bytes: &[u8], variant: Variant, size: (usize, usize), split: &mut Split) -> Result<()> {
    let record = variant.label_bytes() + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(Error::format(path, format!("{} bytes is not a whole number of {record}-byte CIFAR records", bytes.len())));
    }
    let mut planar = vec![0f32; PIXELS];
    for (i, rec) in bytes.chunks(record).enumerate() {
        let label = rec[variant.label_bytes() - 1] as usize;
        if label >= variant.classes() {
            return Err(Error::format(path, format!("record {i} has label {label}, out of range (0..{})", variant.classes())));
        }
        for (p, &b) in planar.iter_mut().zip(&rec[variant.label_bytes()..]) {
            *p = b as f32 / 255.0;
        }
        split.push(&resize_planar(&planar, 3, (SIDE, SIDE), size), label);
    }
    Ok(())
}

/// Class names from the archive's names file, one per line; numbers if it is missing or does
/// not list exactly the right number.
fn class_names(path: &Path, n: usize) -> Vec<String> {
    let names: Option<Vec<String>> = read_bounded(path, 1 << 20)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect());
    match names {
        Some(v) if v.len() == n => v,
        _ => (0..n).map(|c| c.to_string()).collect(),
    }
}
