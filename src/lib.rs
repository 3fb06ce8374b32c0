//! strata: turn an OCI image into a root filesystem without root, or any tar archive into a
//! directory, every byte extracted by a sandboxed helper.
//!
//! This library is what the `strata` command line drives, and what a build system calls:
//!
//! - [`unpack`]: an OCI image (a registry's, an archive's or a layout's) into a root
//!   filesystem, layers cached by chain ID in a store (or not, with [`Options::store`] `None`);
//!   it tells a [`Progress`] callback how it goes and returns a [`Report`].
//! - [`bundle`]: the same into `DIR/rootfs`, with the OCI runtime's `DIR/config.json` (the
//!   image's process and user, rootless), for runc or crun.
//! - [`extract`]: one tar archive (plain, gzip or zstd; a file or stdin) into a new directory,
//!   checked against a SHA-256 if given; an [`ExtractReport`].
//! - [`upkeep`]: what a store holds ([`upkeep::list`]), forgetting an image
//!   ([`upkeep::forget`]), collecting what nothing needs ([`upkeep::gc`]), removing a tree strata
//!   made ([`upkeep::rmtree`]).
//!
//! Each needs the `strata-helper` program beside the running executable, or at
//! `$STRATA_HELPER`: the only process that touches layer contents, in user, mount, network and
//! IPC namespaces, behind Landlock and seccomp. This crate never opens a path that came from an
//! archive, and cannot call the helper's code: it is a crate of its own. `ARCHITECTURE.md`
//! says how the two work together.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use strata::{IdMapMode, Options, Progress, RootMode, SnapshotterMode};
//!
//! let options = Options {
//!     image: "examples/hello-image:latest".into(),
//!     dest: "/tmp/hello-rootfs".into(),
//!     store: None, // --no-store: every layer straight into DEST
//!     platform: None,
//!     idmap: IdMapMode::Auto,
//!     snapshotter: SnapshotterMode::Auto,
//!     root_mode: RootMode::Image,
//!     jobs: 1,
//!     pull: Default::default(), // registries: credentials and TLS as podman finds them
//! };
//! let report = strata::unpack(&options, &mut |event| {
//!     if let Progress::Extracting { index, count, layer, .. } = event {
//!         eprintln!("layer {}/{count}: {}", index + 1, layer.digest);
//!     }
//! })?;
//! println!("{} layers into {}", report.layers.len(), report.rootfs.display());
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod bundle;
mod dest;
mod digest;
mod extract;
mod image;
mod meter;
mod plan;
mod registry;
mod sandbox;
mod store;
mod unpack;
pub mod upkeep;

use strata_protocol as protocol;

pub use bundle::{BundleOptions, bundle};
pub use digest::Digest;
pub use extract::{Archive, ArchiveCompression, ExtractOptions, ExtractReport, extract};
pub use image::Layer;
pub use meter::Meter;
pub use protocol::{Compression, Skipped};
pub use registry::{AuthOptions, PullOptions};
pub use sandbox::IdMapMode;
pub use store::SnapshotterMode;
pub use unpack::{LayerReport, Options, Progress, Report, RootMode, unpack};
