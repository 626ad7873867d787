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
