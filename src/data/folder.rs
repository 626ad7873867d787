//! Image folders in torchvision's `ImageFolder` layout: one sub-folder per class, the class
//! index being the folder name's position in sorted order (torchvision's rule, so labels
//! match a model trained with it), images found recursively inside each class folder. If the
//! root has `train/` (and optionally `val/`, `test/`), those are the splits; otherwise the
//! whole tree is the train split and the caller carves the rest.
//!
//! Images are decoded in parallel, converted to the requested channels (grey is repeated into
//! RGB; RGB becomes grey as PIL's `L`; alpha is dropped) and resized with a triangle filter
//! (PIL's bilinear, what torchvision's `Resize` uses). Nothing outside the root is read: a
//! symbolic link that leads out of it is an error.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Split, fit_image, sorted_entries};
use crate::error::{Error, Result};
use crate::fsutil::{DataRoot, DecodeBudget};

/// torchvision's `IMG_EXTENSIONS`. TIFF is not decoded (not built in): such a file is an
/// error naming it, not silently skipped.
const EXTENSIONS: [&str; 10] = ["jpg", "jpeg", "png", "ppm", "pgm", "pbm", "bmp", "webp", "tif", "tiff"];
const MAX_FILE: u64 = 64 << 20;
const MAX_SIDE: u32 = 16384;

/// Image files with their labels.
pub type LabelledFiles = Vec<(PathBuf, usize)>;

/// A class tree: the class names and every image with its label, in torchvision's order.
pub struct Tree {
    pub classes: Vec<String>,
    pub files: LabelledFiles,
}

/// The splits a root holds: `train/`, `val/`, `test/` if present, else the root as train.
pub struct Splits {
    pub train: Tree,
    pub val: Option<Tree>,
    pub test: Option<Tree>,
}

pub fn scan(root: &Path) -> Result<Splits> {
    let data_root = DataRoot::open(root)?;
    let sub = |name: &str| -> Result<Option<Tree>> {
        let dir = root.join(name);
        if dir.is_dir() { Ok(Some(tree(&dir, &data_root)?)) } else { Ok(None) }
    };
    let Some(train) = sub("train")? else {
        return Ok(Splits { train: tree(root, &data_root)?, val: None, test: None });
    };
    let (val, test) = (sub("val")?, sub("test")?);
    for (t, name) in [(&val, "val"), (&test, "test")] {
        if let Some(t) = t
            && t.classes != train.classes
        {
            return Err(Error::format(root.join(name), format!("has classes {:?}, train/ has {:?}; the labels would not agree", t.classes, train.classes)));
        }
    }
    Ok(Splits { train, val, test })
}

fn tree(dir: &Path, root: &DataRoot) -> Result<Tree> {
    let mut classes = Vec::new();
    for entry in sorted_entries(dir)? {
        if root.resolve(&entry)?.is_dir() {
            let name = entry.file_name().and_then(|n| n.to_str()).ok_or_else(|| Error::format(&entry, "class folder name is not UTF-8"))?;
            classes.push((name.to_string(), entry));
        }
    }
    if classes.is_empty() {
        return Err(Error::format(dir, "no class folders (ImageFolder layout: one sub-folder of images per class)"));
    }
    let mut files = Vec::new();
    for (label, (_, class_dir)) in classes.iter().enumerate() {
        let before = files.len();
        walk(class_dir, root, label, &mut files, 0)?;
        if files.len() == before {
            return Err(Error::format(class_dir, format!("class folder has no images ({})", EXTENSIONS.join(", "))));
        }
    }
    Ok(Tree { classes: classes.into_iter().map(|(n, _)| n).collect(), files })
}

fn walk(dir: &Path, root: &DataRoot, label: usize, out: &mut Vec<(PathBuf, usize)>, depth: usize) -> Result<()> {
    if depth > 32 {
        return Err(Error::format(dir, "folders nested more than 32 deep"));
    }
    for entry in sorted_entries(dir)? {
        let real = root.resolve(&entry)?;
        if real.is_dir() {
            walk(&entry, root, label, out, depth + 1)?;
        } else if has_image_extension(&entry) {
            out.push((entry, label));
        }
    }
    Ok(())
}

fn has_image_extension(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// Decodes one image to planar `[c, h, w]` in [0, 1], with c = 1 for grey images and 3
/// otherwise (alpha dropped).
pub fn decode(path: &Path) -> Result<(Vec<f32>, usize, (usize, usize))> {
    let bytes = crate::fsutil::read_bounded(path, MAX_FILE)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(512 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| Error::format(path, format!("cannot decode the image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_color() {
        let rgb = img.to_rgb8();
        let mut planar = vec![0f32; 3 * h * w];
        for (p, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                planar[c * h * w + p] = px[c] as f32 / 255.0;
            }
        }
        Ok((planar, 3, (h, w)))
    } else {
        let grey = img.to_luma8();
        Ok((grey.as_raw().iter().map(|&v| v as f32 / 255.0).collect(), 1, (h, w)))
    }
}

/// Which files make each split, decided from the file list and labels alone (nothing is
/// decoded): `train/`, `val/`, `test/` trees when present; otherwise the test split is carved
/// per class from the whole tree ([`super::carve_test`]). Validation, when not fixed, is carved
/// later from train exactly as for every other kind.
pub struct Plan {
    pub classes: Vec<String>,
    pub train: LabelledFiles,
    pub val: Option<LabelledFiles>,
    pub test: LabelledFiles,
}

pub fn plan(root: &Path, seed: u64) -> Result<Plan> {
    if !root.is_dir() {
        return Err(Error::format(root, "image folder does not exist or is not a folder"));
    }
    let trees = scan(root)?;
    let (train, test) = match trees.test {
        Some(test) => (trees.train.files, test.files),
        None => {
            let labels: Vec<usize> = trees.train.files.iter().map(|f| f.1).collect();
            let (train_idx, test_idx) = super::carve_test(&labels, seed);
            let pick = |idx: &[usize]| idx.iter().map(|&i| trees.train.files[i].clone()).collect();
            (pick(&train_idx), pick(&test_idx))
        }
    };
    Ok(Plan { classes: trees.train.classes, train, val: trees.val.map(|t| t.files), test })
}

/// Decodes images in parallel into a split of `channels` × `size` samples, taking their
/// decoded size from `budget` before decoding anything.
pub fn decode_files(files: &[(PathBuf, usize)], channels: usize, size: (usize, usize), budget: &mut DecodeBudget) -> Result<Split> {
    let sample_len = channels * size.0 * size.1;
    let origin = files.first().map_or(Path::new("."), |f| f.0.as_path());
    budget.take(origin, files.len(), sample_len)?;
    // Decoded straight into the split's buffer, one sample slot per file.
    let mut split = Split::new(sample_len);
    split.images = vec![0f32; files.len() * sample_len];
    split.images.par_chunks_mut(sample_len).zip(files.par_iter()).try_for_each(|(slot, (path, _))| {
        let (planar, c, hw) = decode(path)?;
        slot.copy_from_slice(&fit_image(&planar, c, hw, channels, size));
        Ok::<(), Error>(())
    })?;
    split.labels = files.iter().map(|(_, label)| *label).collect();
    Ok(split)
}

/// A split decoded a chunk of at most `chunk` images at a time, so memory stays flat in the
/// number of images; every chunk fits `budget` (chunks shrink for large inputs).
pub fn chunks(files: &[(PathBuf, usize)], channels: usize, size: (usize, usize), chunk: usize, budget: DecodeBudget) -> impl Iterator<Item = Result<Split>> + '_ {
    let chunk = chunk.min(budget.samples_that_fit(channels * size.0 * size.1)).max(1);
    files.chunks(chunk).map(move |c| decode_files(c, channels, size, &mut budget.clone()))
}
