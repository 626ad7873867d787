//! The library's typed errors. Every error that comes from a file names the file, so a user
//! handed a broken dataset or model knows which file to look at.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an I/O operation on `path`. The system's reason is part of
    /// the message, not a separate cause, so a printed error chain says it once.
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: std::io::Error },
    /// A file's contents are not what its format requires.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A model graph or its weights are inconsistent.
    #[error("invalid model: {0}")]
    Model(String),
    /// A user-supplied argument is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), reason: source }
    }

    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    pub fn model(msg: impl Into<String>) -> Self {
        Error::Model(msg.into())
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

/// A panic caught by [`catch_panic`]: its message and where it happened.
#[derive(Debug)]
pub struct CaughtPanic {
    pub message: String,
    /// `file:line` of the panic, when the hook saw it.
    pub location: Option<String>,
}

/// Runs `f`, returning a panic as a value instead of unwinding further, and without the default
/// hook's report on stderr: the caller turns it into one clear line. A last resort for code we
/// do not own (an importer fed a hostile file, a GPU backend that panics on a failed kernel),
/// not a way to hide our own bugs.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, CaughtPanic> {
    use std::sync::{Arc, Mutex};
    let location = Arc::new(Mutex::new(None::<String>));
    let hook = std::panic::take_hook();
    let seen = location.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let (Some(l), Ok(mut seen)) = (info.location(), seen.lock()) {
            *seen = Some(format!("{}:{}", l.file(), l.line()));
        }
    }));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.map_err(|p| CaughtPanic {
        message: p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default(),
        location: location.lock().ok().and_then(|l| l.clone()),
    })
}
