//! strata: turn an OCI image into a root filesystem without root, every layer extracted by a
//! sandboxed helper.
//!
//! This library is the parent side, driven by the `strata` CLI: it resolves the image
//! ([`image`]), plans by chain ID ([`plan`]), keeps snapshots ([`store`]) and runs the helper
//! ([`sandbox`]). It never touches a layer's contents: that is the helper's, a crate of its
//! own (`helper/`) that this one cannot call. [`protocol`] is what the two say to each other.

#![deny(missing_docs)]

mod dest;
pub mod digest;
mod extract;
pub mod image;
pub mod plan;
pub use strata_protocol as protocol;
pub mod sandbox;
pub mod store;
mod unpack;
pub mod upkeep;

pub use extract::{Archive, ArchiveCompression, ExtractOptions, ExtractReport, extract};
pub use unpack::{LayerReport, Options, Progress, Report, unpack};
