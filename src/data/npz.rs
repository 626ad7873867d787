//! NumPy arrays: an `.npz` archive with `x` and `y` (and optionally `x_val`/`y_val`,
//! `x_test`/`y_test` for fixed splits), or a pair of `.npy` files given as `X.npy,Y.npy`.
//!
//! `x` is N×H×W×C, N×C×H×W or N×H×W, `uint8` (0–255) or `float32`/`float64` already in [0, 1];
//! `y` any integer type. The NPY format is read by `npyz`; the archive by `zip`. Every declared
//! shape is checked against the bytes actually there before anything is allocated: the file
//! comes from someone we do not trust.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use npyz::{DType, NpyFile, TypeChar};

use super::{Layout, Split, fit_image};
use crate::error::{Error, Result};
use crate::fsutil::DecodeBudget;

/// Where the arrays are.
pub enum Source {
    Archive(PathBuf),
    Pair { x: PathBuf, y: PathBuf },
}

impl Source {
    /// `A.npz`, or `X.npy,Y.npy`.
    pub fn parse(path: &Path) -> Result<Source> {
        let s = path.to_string_lossy();
        match s.split_once(',') {
            Some((x, y)) => Ok(Source::Pair { x: PathBuf::from(x), y: PathBuf::from(y) }),
            None => Ok(Source::Archive(path.to_path_buf())),
        }
    }
}

/// One array as read: its shape and its values widened to `T`.
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub values: Vec<T>,
}

/// The splits found, each `(x, y)`; train is required.
pub struct Arrays {
    pub train: (Array<f32>, Array<i64>),
    pub val: Option<(Array<f32>, Array<i64>)>,
    pub test: Option<(Array<f32>, Array<i64>)>,
    /// The file each split's `x` came from, for error messages.
    pub origin: PathBuf,
}

/// Reads the arrays. Each array's declared size (in its stored type) must fit what is left of
/// `budget`, and `x` takes its values widened to f32 from it before they are read.
pub fn read(source: &Source, budget: &mut DecodeBudget) -> Result<Arrays> {
    match source {
        Source::Pair { x, y } => {
            let xa = read_npy_file(x, budget.left(), |p, n, a| read_x(p, n, a, budget))?;
            let ya = read_npy_file(y, budget.left(), read_y)?;
            Ok(Arrays { train: (xa, ya), val: None, test: None, origin: x.clone() })
        }
        Source::Archive(path) => {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::format(path, format!("not a NumPy .npz (zip) archive: {e}")))?;
            let mut pair = |x: &str, y: &str, required: bool| -> Result<Option<(Array<f32>, Array<i64>)>> {
                let has = |zip: &zip::ZipArchive<File>, n: &str| zip.index_for_name(&format!("{n}.npy")).is_some();
                match (has(&zip, x), has(&zip, y)) {
                    (true, true) => {
                        let xa = read_entry(&mut zip, path, x, budget.left(), |p, n, a| read_x(p, n, a, budget))?;
                        let ya = read_entry(&mut zip, path, y, budget.left(), read_y)?;
                        Ok(Some((xa, ya)))
                    }
                    (false, false) if !required => Ok(None),
                    (hx, _) => {
                        let names: Vec<String> = zip.file_names().filter_map(|n| n.ok()).map(|n| n.into_owned()).collect();
                        Err(Error::format(path, format!("has no array {:?} (arrays: {})", if hx { y } else { x }, names.join(", "))))
                    }
                }
            };
            let train = pair("x", "y", true)?.expect("required");
            let val = pair("x_val", "y_val", false)?;
            let test = pair("x_test", "y_test", false)?;
            Ok(Arrays { train, val, test, origin: path.clone() })
        }
    }
}

/// The most header bytes an .npy may declare (NumPy's own reader refuses more than 10,000).
const MAX_HEADER: u64 = 1 << 16;

/// The deepest bracket nesting an .npy header may have: NumPy writes a flat dict, and
/// structured dtypes nest a few levels at most.
const MAX_HEADER_DEPTH: usize = 8;

/// Refuses an .npy whose preamble declares a header longer than [`MAX_HEADER`] or than the
/// bytes there (`npyz` allocates the declared length before reading it), or whose header nests
/// brackets deeper than [`MAX_HEADER_DEPTH`] (`npyz`'s header parser backtracks exponentially
/// on deep nesting). Both found by fuzzing: a 95-byte file declaring a 4 GiB header, and a
/// 468-byte header of nested braces that took over 15 s. `prefix` is the file's start (at least
/// the preamble and header when the file holds them); anything else is left to `npyz`.
fn check_preamble(path: &Path, prefix: &[u8], available: u64) -> Result<()> {
    if prefix.len() < 10 || !prefix.starts_with(b"\x93NUMPY") {
        return Ok(());
    }
    let (declared, start) = match prefix[6] {
        1 => (u16::from_le_bytes([prefix[8], prefix[9]]) as u64, 10),
        _ if prefix.len() >= 12 => (u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as u64, 12),
        _ => return Ok(()),
    };
    if declared > MAX_HEADER || declared > available {
        return Err(Error::format(path, format!("not a NumPy .npy file: it declares a {declared}-byte header ({available} bytes in the file, at most {MAX_HEADER} allowed)")));
    }
    let header = &prefix[start.min(prefix.len())..(start + declared as usize).min(prefix.len())];
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in header {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_HEADER_DEPTH {
        return Err(Error::format(path, format!("not a NumPy .npy file: its header nests {deepest} levels deep (at most {MAX_HEADER_DEPTH})")));
    }
    Ok(())
}

fn read_npy_file<T>(path: &Path, max_bytes: u64, f: impl FnOnce(&Path, NpyFile<File>, u64) -> Result<Array<T>>) -> Result<Array<T>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut prefix = Vec::new();
    (&mut file).take(12 + MAX_HEADER).read_to_end(&mut prefix).map_err(|e| Error::io(path, e))?;
    check_preamble(path, &prefix, len)?;
    std::io::Seek::rewind(&mut file).map_err(|e| Error::io(path, e))?;
    let npy = NpyFile::new(file).map_err(|e| Error::format(path, format!("not a NumPy .npy file: {e}")))?;
    f(path, npy, len.min(max_bytes))
}

fn read_entry<T>(zip: &mut zip::ZipArchive<File>, path: &Path, name: &str, max_bytes: u64, f: impl FnOnce(&Path, NpyFile<std::io::Cursor<Vec<u8>>>, u64) -> Result<Array<T>>) -> Result<Array<T>> {
    let named = path.join(format!("{name}.npy"));
    let entry = zip.by_name(&format!("{name}.npy")).map_err(|e| Error::format(&named, e.to_string()))?;
    // The entry's declared uncompressed size bounds what we read; a stream that runs longer is
    // cut there, and the data actually read must fill the array's declared shape.
    let declared = entry.size();
    if declared > max_bytes {
        return Err(Error::format(&named, format!("is {declared} bytes uncompressed, more than the {max_bytes} allowed")));
    }
    let mut bytes = Vec::with_capacity(declared as usize);
    entry.take(declared).read_to_end(&mut bytes).map_err(|e| Error::format(&named, format!("cannot decompress: {e}")))?;
    let len = bytes.len() as u64;
    check_preamble(&named, &bytes, len)?;
    let npy = NpyFile::new(std::io::Cursor::new(bytes)).map_err(|e| Error::format(&named, format!("not a NumPy .npy array: {e}")))?;
    f(&named, npy, len)
}

/// The element count a header declares, refused if its bytes exceed `available`.
fn checked_len<R: Read>(path: &Path, npy: &NpyFile<R>, item: u64, available: u64) -> Result<(Vec<usize>, usize)> {
    if npy.order() != npyz::Order::C {
        return Err(Error::format(path, "array is in Fortran order; save it with np.ascontiguousarray"));
    }
    let mut n: u64 = 1;
    for &d in npy.shape() {
        n = n.checked_mul(d).ok_or_else(|| Error::format(path, format!("declared shape {:?} overflows", npy.shape())))?;
    }
    let bytes = n.checked_mul(item).ok_or_else(|| Error::format(path, format!("declared shape {:?} overflows", npy.shape())))?;
    if bytes > available {
        return Err(Error::format(path, format!("declared shape {:?} needs {bytes} bytes, more than the {available} there (or allowed)", npy.shape())));
    }
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    Ok((shape, n as usize))
}

fn type_of<R: Read>(path: &Path, npy: &NpyFile<R>) -> Result<(TypeChar, u64)> {
    match npy.dtype() {
        DType::Plain(ts) => Ok((ts.type_char(), ts.size_field())),
        other => Err(Error::format(path, format!("unsupported dtype {}", other.descr()))),
    }
}

fn collect<T: npyz::Deserialize, R: Read>(path: &Path, npy: NpyFile<R>) -> Result<Vec<T>> {
    npy.into_vec::<T>().map_err(|e| Error::format(path, format!("array data is truncated or unreadable: {e}")))
}

/// `x`: uint8 scaled by 1/255, or float32/float64 that must already be in [0, 1]. Its values
/// widened to f32 are taken from `budget` before they are read.
fn read_x<R: Read>(path: &Path, npy: NpyFile<R>, available: u64, budget: &mut DecodeBudget) -> Result<Array<f32>> {
    let (kind, size) = type_of(path, &npy)?;
    let (shape, n) = checked_len(path, &npy, size.max(1), available)?;
    budget.take(path, n, 1)?;
    let values: Vec<f32> = match (kind, size) {
        (TypeChar::Uint, 1) => collect::<u8, R>(path, npy)?.into_iter().map(|v| v as f32 / 255.0).collect(),
        (TypeChar::Float, 4) => collect::<f32, R>(path, npy)?,
        (TypeChar::Float, 8) => collect::<f64, R>(path, npy)?.into_iter().map(|v| v as f32).collect(),
        _ => return Err(Error::format(path, format!("x must be uint8, float32 or float64, not {}", describe(kind, size)))),
    };
    if let Some(bad) = values.iter().find(|v| !(-1e-6..=1.0 + 1e-6).contains(*v)) {
        return Err(Error::format(path, format!("x has value {bad}; floating-point inputs must be in [0, 1] (fineprune normalises them itself)")));
    }
    Ok(Array { shape, values })
}

/// `y`: any integer type, widened to i64.
fn read_y<R: Read>(path: &Path, npy: NpyFile<R>, available: u64) -> Result<Array<i64>> {
    let (kind, size) = type_of(path, &npy)?;
    let (shape, _) = checked_len(path, &npy, size.max(1), available)?;
    let values: Vec<i64> = match (kind, size) {
        (TypeChar::Int, 1) => collect::<i8, R>(path, npy)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 2) => collect::<i16, R>(path, npy)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 4) => collect::<i32, R>(path, npy)?.into_iter().map(i64::from).collect(),
        (TypeChar::Int, 8) => collect::<i64, R>(path, npy)?,
        (TypeChar::Uint, 1) => collect::<u8, R>(path, npy)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 2) => collect::<u16, R>(path, npy)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 4) => collect::<u32, R>(path, npy)?.into_iter().map(i64::from).collect(),
        (TypeChar::Uint, 8) => collect::<u64, R>(path, npy)?.into_iter().map(|v| i64::try_from(v).unwrap_or(i64::MAX)).collect(),
        _ => return Err(Error::format(path, format!("y must be an integer array, not {}", describe(kind, size)))),
    };
    if shape.len() != 1 {
        return Err(Error::format(path, format!("y must be one-dimensional, not of shape {shape:?}")));
    }
    Ok(Array { shape, values })
}

fn describe(kind: TypeChar, size: u64) -> String {
    format!("{}{}", kind.to_str(), size)
}

/// Turns one `(x, y)` pair into a split of planar samples of `channels` channels at `size`.
/// The layout is `layout` if given, else inferred: N×H×W is grey; of N×A×B×C the axis that
/// matches `channels` (or is 1 or 3) is the channel axis, the last one when both could be.
/// The converted samples are taken from `budget` before they are allocated.
pub fn to_split(path: &Path, (x, y): &(Array<f32>, Array<i64>), layout: Option<Layout>, channels: Option<usize>, size: Option<(usize, usize)>, classes: Option<usize>, budget: &mut DecodeBudget) -> Result<(Split, usize, (usize, usize))> {
    let n = x.shape.first().copied().unwrap_or(0);
    if n != y.values.len() {
        return Err(Error::format(path, format!("x has {n} samples but y has {} labels", y.values.len())));
    }
    let (src_c, h, w, nhwc) = match (x.shape.as_slice(), layout) {
        ([_, h, w], None) => (1, *h, *w, false),
        ([_, a, b, c], Some(Layout::Nhwc)) => (*c, *a, *b, true),
        ([_, c, a, b], Some(Layout::Nchw)) => (*c, *a, *b, false),
        ([_, a, b, c], None) => {
            let fits = |k: usize| channels.map_or(k == 1 || k == 3, |m| k == m || k == 1 || k == 3);
            if fits(*c) { (*c, *a, *b, true) } else if fits(*a) { (*a, *b, *c, false) } else {
                return Err(Error::format(path, format!("cannot tell the channel axis of x of shape {:?}; give --layout nhwc or nchw", x.shape)));
            }
        }
        _ => return Err(Error::format(path, format!("x must be N×H×W, N×H×W×C or N×C×H×W, not of shape {:?}", x.shape))),
    };
    if !matches!(src_c, 1 | 3 | 4) || h == 0 || w == 0 {
        return Err(Error::format(path, format!("x of shape {:?} does not hold images of 1, 3 or 4 channels", x.shape)));
    }
    let channels = channels.unwrap_or(src_c.min(3));
    let size = size.unwrap_or((h, w));
    if size.0 > super::MAX_SIDE || size.1 > super::MAX_SIDE {
        return Err(Error::format(path, format!("images of {}x{} are larger than the {m}x{m} accepted; give --resize", size.0, size.1, m = super::MAX_SIDE)));
    }
    budget.take(path, n, channels * size.0 * size.1)?;
    let mut split = Split::new(channels * size.0 * size.1);
    split.images.reserve(n * split.sample_len);
    let per = src_c * h * w;
    let mut planar = vec![0f32; per];
    for (i, &label) in y.values.iter().enumerate() {
        let src = &x.values[i * per..(i + 1) * per];
        if nhwc {
            for (p, px) in src.chunks(src_c).enumerate() {
                for (c, &v) in px.iter().enumerate() {
                    planar[c * h * w + p] = v;
                }
            }
        } else {
            planar.copy_from_slice(src);
        }
        let sample = fit_image(&planar, src_c, (h, w), channels, size);
        let label = usize::try_from(label).ok().filter(|&l| classes.is_none_or(|k| l < k));
        let Some(label) = label else {
            return Err(Error::format(path, format!("label {} of sample {i} is out of range{}", y.values[i], classes.map(|k| format!(" (0..{k})")).unwrap_or_default())));
        };
        split.push(&sample, label);
    }
    Ok((split, channels, size))
}

/// Writes `split` as a NumPy archive that the `npz:` data kind (and NumPy) read back: `x` as
/// float32 in [0, 1], N×C×H×W (N×H×W for one channel), `y` as int64. Written atomically; floats,
/// so a blend or a sinusoid reaches another tool exactly as fineprune applied it.
pub fn write(path: &Path, split: &Split, [c, h, w]: [usize; 3]) -> Result<()> {
    use npyz::WriterBuilder;
    let n = split.len() as u64;
    let x_shape: Vec<u64> = if c == 1 { vec![n, h as u64, w as u64] } else { vec![n, c as u64, h as u64, w as u64] };
    let io = |e: std::io::Error| Error::io(path, e);
    let zip_err = |e: zip::result::ZipError| Error::format(path, format!("writing the archive: {e}"));
    // Each array is written straight into the archive: the images are held once, not copied.
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    archive.start_file("x.npy", stored).map_err(zip_err)?;
    let mut wr = npyz::WriteOptions::new().default_dtype().shape(&x_shape).writer(&mut archive).begin_nd().map_err(io)?;
    wr.extend(split.images.iter().copied()).map_err(io)?;
    wr.finish().map_err(io)?;
    archive.start_file("y.npy", stored).map_err(zip_err)?;
    let mut wr = npyz::WriteOptions::new().default_dtype().shape(&[n]).writer(&mut archive).begin_nd().map_err(io)?;
    wr.extend(split.labels.iter().map(|&l| l as i64)).map_err(io)?;
    wr.finish().map_err(io)?;
    let bytes = archive.finish().map_err(zip_err)?.into_inner();
    crate::fsutil::write_atomic(path, &bytes)
}
