//! Binary PNM images (P5 grey, P6 colour) with `#` comments, as GTSRB and ORL ship them.

use std::path::Path;

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct Pnm {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    /// Planar `[c, h, w]`, scaled to [0, 1].
    pub planar: Vec<f32>,
}

/// Largest image side we accept: GTSRB's largest is 250, ORL's 112.
const MAX_SIDE: usize = 8192;

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Pnm> {
    let channels = match bytes.get(..2) {
        Some(b"P5") => 1,
        Some(b"P6") => 3,
        _ => return Err(Error::format(path, "not a binary PNM image (expected P5 or P6 magic)")),
    };
    let mut pos = 2;
    let mut fields = [0usize; 3];
    for field in &mut fields {
        // Skip white space and comments.
        loop {
            match bytes.get(pos) {
                Some(b) if b.is_ascii_whitespace() => pos += 1,
                Some(b'#') => {
                    while bytes.get(pos).is_some_and(|&b| b != b'\n') {
                        pos += 1;
                    }
                }
                Some(_) => break,
                None => return Err(Error::format(path, "truncated PNM header")),
            }
        }
        let start = pos;
        while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        }
        let text = std::str::from_utf8(&bytes[start..pos]).unwrap_or("");
        *field = text
            .parse()
            .map_err(|_| Error::format(path, format!("bad PNM header field at byte {start}")))?;
    }
    let [width, height, maxval] = fields;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::format(path, format!("image size {width}x{height} is out of range")));
    }
    if maxval == 0 || maxval > 255 {
        return Err(Error::format(path, format!("maxval {maxval} not supported (8-bit images only)")));
    }
    // Exactly one white-space byte separates the header from the pixels.
    pos += 1;
    let need = width * height * channels;
    let data = bytes.get(pos..pos + need).ok_or_else(|| {
        Error::format(path, format!("truncated: {width}x{height}x{channels} needs {need} pixel bytes, file has {}", bytes.len().saturating_sub(pos)))
    })?;
    let scale = 1.0 / maxval as f32;
    let mut planar = vec![0f32; need];
    let plane = width * height;
    for (i, px) in data.chunks(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            planar[c * plane + i] = (v as f32 * scale).min(1.0);
        }
    }
    Ok(Pnm { width, height, channels, planar })
}

/// Reads a PNM file that must lie inside the data folder `root`.
pub fn read(root: &crate::fsutil::DataRoot, path: &Path) -> Result<Pnm> {
    let bytes = root.read(path, (MAX_SIDE * MAX_SIDE * 3 + 1024) as u64)?;
    parse(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_and_planarises() {
        let mut f = b"P6\n# a comment\n2 1\n# another\n255\n".to_vec();
        f.extend_from_slice(&[255, 0, 0, 0, 0, 255]);
        let img = parse(Path::new("x.ppm"), &f).unwrap();
        assert_eq!((img.width, img.height, img.channels), (2, 1, 3));
        assert_eq!(img.planar, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn truncated_and_wrong_magic_are_errors_naming_the_file() {
        let f = b"P6\n4 4\n255\n\x00\x01".to_vec();
        let e = parse(Path::new("bad.ppm"), &f).unwrap_err().to_string();
        assert!(e.contains("bad.ppm") && e.contains("truncated"), "{e}");
        let e = parse(Path::new("bad.ppm"), b"P3\n1 1\n255\n1 2 3").unwrap_err().to_string();
        assert!(e.contains("P5 or P6"), "{e}");
        let e = parse(Path::new("bad.ppm"), b"P5\n1 1\n65535\n\x00\x00").unwrap_err().to_string();
        assert!(e.contains("maxval"), "{e}");
    }
}
