//! GTSRB in its original layout: `Final_Training/Images/000NN/GT-000NN.csv` and
//! `Final_Test/GT-final_test.csv`, `;`-separated, PPM images cropped to the ROI and resized.
//!
//! Note on the copy in `../shared/data`: its PPMs were re-saved at 32x32 by the redistributor
//! while the CSVs keep the original width, height and ROI. When a PPM's size differs from the
//! CSV's, we scale the ROI to the image actually stored instead of cropping with coordinates
//! from a different resolution.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{Loaded, Split, pnm, resize_planar};
use crate::error::{Error, Result};
use crate::fsutil::{DataRoot, DecodeBudget};

pub const CLASS_NAMES: [&str; 43] = [
    "speed limit 20", "speed limit 30", "speed limit 50", "speed limit 60", "speed limit 70",
    "speed limit 80", "end of speed limit 80", "speed limit 100", "speed limit 120", "no passing",
    "no passing over 3.5t", "right of way at next intersection", "priority road", "yield", "stop",
    "no vehicles", "over 3.5t prohibited", "no entry", "general caution", "dangerous curve left",
    "dangerous curve right", "double curve", "bumpy road", "slippery road", "road narrows right",
    "road work", "traffic signals", "pedestrians", "children crossing", "bicycles crossing",
    "ice or snow", "wild animals crossing", "end of all limits", "turn right ahead",
    "turn left ahead", "ahead only", "straight or right", "straight or left", "keep right",
    "keep left", "roundabout", "end of no passing", "end of no passing over 3.5t",
];

/// One row of a GTSRB annotation CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub file: PathBuf,
    pub width: usize,
    pub height: usize,
    /// Inclusive ROI corners, in the CSV's (original) resolution.
    pub roi: [usize; 4],
    pub class: usize,
}

/// Parses an annotation CSV. `dir` is the folder the image names are relative to.
pub fn parse_csv(path: &Path, text: &str, dir: &Path) -> Result<Vec<Row>> {
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| Error::format(path, "empty CSV"))?;
    let cols: Vec<&str> = header.trim().split(';').collect();
    let col = |name: &str| {
        cols.iter().position(|c| *c == name).ok_or_else(|| Error::format(path, format!("CSV header has no {name:?} column")))
    };
    let idx = [col("Filename")?, col("Width")?, col("Height")?, col("Roi.X1")?, col("Roi.Y1")?, col("Roi.X2")?, col("Roi.Y2")?, col("ClassId")?];
    let mut rows = Vec::new();
    for (lineno, line) in lines.enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(';').collect();
        let at = |i: usize| -> Result<&str> {
            f.get(i).copied().ok_or_else(|| Error::format(path, format!("line {}: too few fields", lineno + 2)))
        };
        let num = |i: usize| -> Result<usize> {
            at(i)?.trim().parse().map_err(|_| Error::format(path, format!("line {}: field {} is not a number", lineno + 2, i + 1)))
        };
        let name = at(idx[0])?;
        // Image names must stay inside the dataset folder.
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(Error::format(path, format!("line {}: file name {name:?} is not a plain file name", lineno + 2)));
        }
        let class = num(idx[7])?;
        if class >= CLASS_NAMES.len() {
            return Err(Error::format(path, format!("line {}: class {class} is out of range (0..43)", lineno + 2)));
        }
        let roi = [num(idx[3])?, num(idx[4])?, num(idx[5])?, num(idx[6])?];
        let (width, height) = (num(idx[1])?, num(idx[2])?);
        if roi[0] > roi[2] || roi[1] > roi[3] || roi[2] >= width || roi[3] >= height {
            return Err(Error::format(path, format!("line {}: ROI {roi:?} does not fit a {width}x{height} image", lineno + 2)));
        }
        rows.push(Row { file: dir.join(name), width, height, roi, class });
    }
    Ok(rows)
}

/// Reads one image, crops it to its ROI (scaled to the stored resolution) and resizes it.
pub fn load_image(root: &DataRoot, row: &Row, size: (usize, usize)) -> Result<Vec<f32>> {
    let img = pnm::read(root, &row.file)?;
    if img.channels != 3 {
        return Err(Error::format(&row.file, "expected a colour (P6) image"));
    }
    let sx = img.width as f64 / row.width as f64;
    let sy = img.height as f64 / row.height as f64;
    let x1 = ((row.roi[0] as f64 * sx).floor() as usize).min(img.width - 1);
    let y1 = ((row.roi[1] as f64 * sy).floor() as usize).min(img.height - 1);
    let x2 = (((row.roi[2] + 1) as f64 * sx).ceil() as usize).clamp(x1 + 1, img.width);
    let y2 = (((row.roi[3] + 1) as f64 * sy).ceil() as usize).clamp(y1 + 1, img.height);
    let (cw, ch) = (x2 - x1, y2 - y1);
    let mut crop = Vec::with_capacity(3 * cw * ch);
    for c in 0..3 {
        for y in y1..y2 {
            let start = c * img.width * img.height + y * img.width;
            crop.extend_from_slice(&img.planar[start + x1..start + x2]);
        }
    }
    Ok(resize_planar(&crop, 3, (ch, cw), size))
}

fn read_csv(root: &DataRoot, path: &Path, dir: &Path) -> Result<Vec<Row>> {
    let bytes = root.read(path, 64 << 20)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::format(path, "CSV is not UTF-8"))?;
    parse_csv(path, &text, dir)
}

/// The rows of one training class folder, with each image's track as its group.
pub fn training_rows(root: &DataRoot, class: usize) -> Result<Vec<(Row, u64)>> {
    let dir = root.path().join("Final_Training/Images").join(format!("{class:05}"));
    let csv = dir.join(format!("GT-{class:05}.csv"));
    let rows = read_csv(root, &csv, &dir)?;
    rows.into_iter()
        .map(|r| {
            if r.class != class {
                return Err(Error::format(&csv, format!("row for {} has class {} in the folder of class {class}", r.file.display(), r.class)));
            }
            // Training images are named TRACK_FRAME.ppm; a track is one physical sign.
            let stem = r.file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let track: u64 = stem.split('_').next().and_then(|t| t.parse().ok()).ok_or_else(|| {
                Error::format(&csv, format!("training image name {stem:?} is not TRACK_FRAME"))
            })?;
            Ok((r, (class as u64) << 32 | track))
        })
        .collect()
}

fn load_rows(root: &DataRoot, rows: &[Row], size: (usize, usize)) -> Result<Split> {
    let images: Vec<Vec<f32>> = rows.par_iter().map(|r| load_image(root, r, size)).collect::<Result<_>>()?;
    let mut split = Split::new(3 * size.0 * size.1);
    for (img, r) in images.iter().zip(rows) {
        split.push(img, r.class);
    }
    Ok(split)
}

pub fn load(root: &DataRoot, size: (usize, usize), budget: &mut DecodeBudget) -> Result<Loaded> {
    let mut rows = Vec::new();
    let mut groups = Vec::new();
    for class in 0..CLASS_NAMES.len() {
        for (r, g) in training_rows(root, class)? {
            rows.push(r);
            groups.push(g);
        }
    }
    let test_dir = root.path().join("Final_Test/Images");
    let test_csv = root.path().join("Final_Test/GT-final_test.csv");
    let test_rows = read_csv(root, &test_csv, &test_dir)?;
    budget.take(root.path(), rows.len() + test_rows.len(), 3 * size.0 * size.1)?;
    let train = load_rows(root, &rows, size)?;
    let test = load_rows(root, &test_rows, size)?;
    Ok(Loaded { channels: 3, classes: CLASS_NAMES.iter().map(|s| s.to_string()).collect(), train, train_groups: groups, val: None, test })
}
