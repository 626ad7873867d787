//! File helpers every reader and writer uses: bounded reads (inputs are untrusted) and atomic
//! writes (a failed run never leaves a half-written output behind).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Reads a whole file, refusing files larger than `max_bytes` before reading them: a
/// multi-gigabyte "image" from an untrusted source must not exhaust memory.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::format(path, "not a regular file"));
    }
    if meta.len() > max_bytes {
        return Err(Error::format(path, format!("file is {} bytes, more than the limit of {max_bytes}", meta.len())));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Memory the kernel says is available now (Linux `MemAvailable`); `None` elsewhere.
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The most bytes a dataset's decoded samples may take: a quarter of the available memory
/// (training copies batches beside them), at least 256 MiB, at most 16 GiB.
pub fn data_budget() -> u64 {
    (available_memory().unwrap_or(4 << 30) / 4).clamp(256 << 20, 16 << 30)
}

/// Bytes that `samples` samples of `sample_len` f32 values take once decoded to the model's
/// shape (saturating: an overflowing product is simply too large).
pub fn decoded_bytes(samples: usize, sample_len: usize) -> u64 {
    (samples as u64).saturating_mul(sample_len as u64).saturating_mul(4)
}

/// How many decoded bytes a dataset may still take. Checked on the output (after widening to
/// f32 and resizing to the model's input), before anything is allocated, so a tiny file resized
/// to a huge model is refused as surely as a huge file. One budget spans all splits of a load.
#[derive(Clone, Copy, Debug)]
pub struct DecodeBudget {
    left: u64,
    total: u64,
}

impl DecodeBudget {
    pub fn new(total: u64) -> DecodeBudget {
        DecodeBudget { left: total, total }
    }

    /// Takes the bytes of `samples` samples of `sample_len` values read from `path`, or
    /// refuses them.
    pub fn take(&mut self, path: &Path, samples: usize, sample_len: usize) -> Result<()> {
        let bytes = decoded_bytes(samples, sample_len);
        if bytes > self.left {
            return Err(Error::format(
                path,
                format!(
                    "{samples} samples of {sample_len} values take {bytes} bytes decoded to the model's input shape, more than the {} bytes allowed (a quarter of the available memory; {} already taken)",
                    self.total,
                    self.total - self.left
                ),
            ));
        }
        self.left -= bytes;
        Ok(())
    }

    /// Bytes still free.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// The most samples of `sample_len` values that still fit (at least one).
    pub fn samples_that_fit(&self, sample_len: usize) -> usize {
        (self.left / decoded_bytes(1, sample_len).max(1)).clamp(1, usize::MAX as u64) as usize
    }
}

/// A data folder from someone we do not trust: every file is read through it, and a path that
/// resolves outside it (a symbolic link, `..`) is refused.
pub struct DataRoot {
    canonical: PathBuf,
}

impl DataRoot {
    pub fn open(root: &Path) -> Result<DataRoot> {
        let canonical = root.canonicalize().map_err(|e| Error::io(root, e))?;
        Ok(DataRoot { canonical })
    }

    /// The folder itself (resolved).
    pub fn path(&self) -> &Path {
        &self.canonical
    }

    /// `path` resolved, or an error naming it if it leads outside the folder.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let real = path.canonicalize().map_err(|e| Error::io(path, e))?;
        if !real.starts_with(&self.canonical) {
            return Err(Error::format(path, format!("leads outside the data folder (to {}); links out of it are refused", real.display())));
        }
        Ok(real)
    }

    /// [`read_bounded`] of a file that must lie inside the folder.
    pub fn read(&self, path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
        let real = self.resolve(path)?;
        read_bounded(&real, max_bytes).map_err(|e| match e {
            Error::Format { msg, .. } => Error::format(path, msg),
            Error::Io { reason, .. } => Error::io(path, reason),
            other => other,
        })
    }
}

/// Writes `bytes` to `path` atomically: a new temporary file in the same folder (a random
/// name, created exclusively, so a planted file or symbolic link there is never written
/// through), flushed to disk, then renamed over the target. Readers see the old file or the
/// new one, never a mix; a symbolic link at `path` itself is replaced, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::format(path, "output path has no file name"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(tmp.path(), e))?;
    // On failure the temporary file is removed when `tmp` drops.
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-folder/out.bin");
        assert!(write_atomic(&p, b"x").is_err());
        assert!(!p.exists());
    }

    #[test]
    fn planted_link_at_a_temporary_name_is_not_written_through() {
        // Before: the temporary name was `.out.bin.tmp-PID`, predictable; a link planted there
        // redirected the write. Plant links at every name of that form for this process.
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let p = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, dir.path().join(format!(".out.bin.tmp-{}", std::process::id()))).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        // A link at the output path itself is replaced by the file, not followed.
        let q = dir.path().join("linked.bin");
        std::os::unix::fs::symlink(&victim, &q).unwrap();
        write_atomic(&q, b"other").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&q).unwrap().file_type().is_symlink());
    }

    #[test]
    fn data_root_refuses_links_out_of_it() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("ok"), b"k").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link")).unwrap();
        let r = DataRoot::open(root.path()).unwrap();
        assert_eq!(r.read(&root.path().join("ok"), 10).unwrap(), b"k");
        let e = r.read(&root.path().join("link"), 10).unwrap_err().to_string();
        assert!(e.contains("outside the data folder"), "{e}");
        let e = r.read(&root.path().join("../").join(outside.path().file_name().unwrap()).join("secret"), 10).unwrap_err().to_string();
        assert!(e.contains("outside") || e.contains("No such"), "{e}");
    }

    #[test]
    fn decoded_budget_counts_the_output_across_splits_and_saturates() {
        let p = Path::new("x.npz");
        let mut b = DecodeBudget::new(800);
        b.take(p, 10, 10).unwrap();
        let e = b.take(p, 10, 11).unwrap_err().to_string();
        assert!(e.contains("x.npz") && e.contains("440 bytes") && e.contains("400 already"), "{e}");
        assert_eq!(b.samples_that_fit(10), 10);
        assert!(DecodeBudget::new(u64::MAX - 1).take(p, usize::MAX, usize::MAX).is_err());
    }

    #[test]
    fn bounded_read_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        let e = read_bounded(&p, 10).unwrap_err().to_string();
        assert!(e.contains("big") && e.contains("limit"), "{e}");
    }
}
