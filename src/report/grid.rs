//! Sample grids as PNG: rows of (clean, triggered) pairs, scaled up for viewing.

use std::path::Path;

use crate::data::Split;
use crate::error::{Error, Result};

/// Renders sample pairs side by side: `left[i] | right[i]` per row. Colour samples are shown
/// as RGB; one-channel samples (grey images, spectrograms) are stretched to their own range.
pub fn pairs_png(left: &Split, right: &Split, shape: [usize; 3], rows: usize, scale: usize, path: &Path) -> Result<()> {
    columns_png(&[left, right], shape, rows, scale, path)
}

/// Renders columns of samples: row `i` shows sample `i` of every column, left to right.
pub fn columns_png(columns: &[&Split], shape: [usize; 3], rows: usize, scale: usize, path: &Path) -> Result<()> {
    let [c, h, w] = shape;
    let rows = columns.iter().map(|s| s.len()).fold(rows, usize::min).max(1);
    let (cell_w, cell_h, gap) = (w * scale, h * scale, 4 * scale.max(1));
    let width = columns.len() * (cell_w + gap) + gap;
    let height = rows * (cell_h + gap) + gap;
    let mut img = image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255, 255, 255]));
    for r in 0..rows {
        for (col, split) in columns.iter().enumerate() {
            let s = split.sample(r);
            let (lo, hi) = if c == 1 { s.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v))) } else { (0.0, 1.0) };
            let span = (hi - lo).max(1e-6);
            for y in 0..cell_h {
                for x in 0..cell_w {
                    let (sy, sx) = (y / scale, x / scale);
                    let px = |ch: usize| (((s[ch * h * w + sy * w + sx] - lo) / span).clamp(0.0, 1.0) * 255.0) as u8;
                    let rgb = if c == 3 { [px(0), px(1), px(2)] } else { [px(0); 3] };
                    img.put_pixel((gap + col * (cell_w + gap) + x) as u32, (gap + r * (cell_h + gap) + y) as u32, image::Rgb(rgb));
                }
            }
        }
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| Error::format(path, format!("encoding PNG: {e}")))?;
    crate::fsutil::write_atomic(path, &bytes)
}
