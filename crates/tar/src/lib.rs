//! A streaming tar reader that yields, field for field, the entries Go's `archive/tar` yields:
//! the reader every container engine (containerd, moby, podman, BuildKit) applies layers with.
//! An image must mean the same thing to strata as to them, so this crate follows Go's rules
//! where other readers differ (which PAX record wins, which types carry data, how V7, ustar,
//! GNU, PAX and star headers are told apart, GNU and PAX sparse files), and refuses what Go
//! refuses.
//!
//! It differs from Go in one way, on purpose: memory stays bounded whatever the input. Go
//! already limits PAX and GNU long-name headers to 1 MiB each; this crate limits a sparse map
//! to 1 MiB too (Go reads a version 1.0 map, or old GNU extension blocks, of any size).
//!
//! Pure parsing: no filesystem calls. [`Archive`] reads headers and data from any
//! [`std::io::Read`]; [`Header`] is one entry after every extension header is applied.

#![deny(missing_docs)]

mod block;
mod error;
mod header;
mod numbers;
mod pax;
mod reader;
mod sparse;

pub use error::Error;
pub use header::{Header, Kind, Time};
pub use reader::{Archive, Data};
pub use sparse::Region;

/// The most an extension header (PAX records, a GNU long name or link name) or a sparse map
/// may hold: Go's limit for the first two.
pub const MAX_SPECIAL: u64 = 1 << 20;
