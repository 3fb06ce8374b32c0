//! Why an archive cannot be read.

use std::io;

/// An archive Go's reader refuses too, or the stream under it failing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A header or extension header is malformed (Go's `ErrHeader`).
    #[error("invalid tar header: {0}")]
    Header(&'static str),
    /// An extension header or sparse map is larger than [`crate::MAX_SPECIAL`] (Go's
    /// `ErrFieldTooLong`).
    #[error("{0} is over the limit of 1 MiB")]
    TooLong(&'static str),
    /// The stream ends inside a header or an entry's data.
    #[error("the tar stream ends inside {0}")]
    Truncated(&'static str),
    /// A sparse file's map places more data than the entry holds.
    #[error("sparse file's map places more data than the entry holds")]
    MissingData,
    /// A sparse file's entry holds more data than its map places.
    #[error("sparse file's entry holds more data than its map places")]
    UnreferencedData,
    /// The archive was read on after an error, which stops it for good, as in Go.
    #[error("the tar stream was read on after an error")]
    Stopped,
    /// Reading the stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        match err {
            Error::Io(err) => err,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
