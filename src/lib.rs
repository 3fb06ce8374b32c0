//! strata: turn an OCI image into a root filesystem without root, every layer extracted by a
//! sandboxed helper.
//!
//! The parent side (this library, driven by the `strata` CLI) resolves the image
//! ([`image`]), plans by chain ID ([`plan`]), keeps snapshots ([`store`]) and runs the helper
//! ([`sandbox`]); the helper side applies layers ([`extract`]) and copies trees ([`tree`]),
//! both through fd-relative calls ([`at`]). [`protocol`] is what the two say to each other.

pub mod at;
mod dest;
pub mod digest;
pub mod extract;
pub mod image;
pub mod plan;
pub mod protocol;
pub mod sandbox;
pub mod store;
pub mod tree;
mod unpack;
pub mod upkeep;

pub use unpack::{LayerReport, Options, Progress, Report, unpack};
