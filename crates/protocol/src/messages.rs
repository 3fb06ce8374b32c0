//! The request, the reply, and the fds they travel on.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Digest, IdMap};

/// The fd on which the helper writes its one-line reply.
pub const RESULT_FD: i32 = 3;
/// The fd on which the helper reads the parent's word that its id maps are written.
pub const CONTROL_FD: i32 = 4;
/// With subordinate ids, the helper writes this byte on [`RESULT_FD`] once it has unshared
/// (before its reply), and waits for [`MAPS_READY`] on [`CONTROL_FD`]: only a process outside
/// the namespace can run `newuidmap` for it.
pub const MAPS_WANTED: [u8; 1] = *b"M";
/// The parent's word on [`CONTROL_FD`] that the helper's id maps are written.
pub const MAPS_READY: [u8; 1] = *b"R";

/// One job for the helper.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// The directory the helper pivots into: the only tree it may write.
    pub root: PathBuf,
    /// The ids its user namespace maps.
    pub idmap: IdMap,
    /// What to do there.
    pub op: Op,
}

/// Where a layer is applied.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Onto {
    /// `root` itself: DEST, or a native snapshot.
    Plain,
    /// An overlay mounted at `root` first (inside the helper's mount namespace): the layer is
    /// applied to the merged view and lands in its upper directory (the overlay snapshotter).
    Overlay(Overlay),
    /// `root` is an overlay snapshot's own directory, written while the layers below it are
    /// not mounted (so that layers can be extracted side by side). What the layer removes is
    /// recorded as overlayfs records it, as whiteout devices and opaque directories; an entry
    /// whose result depends on the layers below (a hardlink to their file, an entry in a
    /// directory the layer does not make) stops the helper with [`Reply::NeedsLowers`].
    Parentless,
}

/// An overlay mount of the snapshot being written on the snapshots below it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overlay {
    /// The snapshots below, top first.
    pub lowers: Vec<PathBuf>,
    /// The snapshot being written.
    pub upper: PathBuf,
    /// overlayfs's scratch directory, on the same filesystem as `upper`.
    pub work: PathBuf,
}

/// The helper's job.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Apply the layer on stdin `onto` `root`, with OCI whiteout semantics; with `also_to`,
    /// to that directory as well, in the same pass (a store's cold run fills DEST while it
    /// fills the snapshot, rather than copying it afterwards).
    Apply {
        /// What the layer's media type declares.
        compression: Compression,
        /// Where the layer goes.
        onto: Onto,
        /// A second tree, written in the same pass.
        also_to: Option<PathBuf>,
    },
    /// Copy a tree into the empty `root`, preserving hardlinks, owners, modes, times and xattrs;
    /// never sharing inodes with the source. The source is `sources[0]`, or with several, the
    /// read-only overlay of them all (top first), as the overlay snapshotter stores an image.
    Copy {
        /// The trees to copy: one, or the layers of an overlay, top first.
        sources: Vec<PathBuf>,
    },
    /// Remove everything inside `root` (the parent then removes the empty directory).
    Clear,
}

/// The compression a layer's media type declares. The helper checks it against the stream's
/// magic bytes; `Detect` (Docker's `…diff.tar`) accepts whatever the magic says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip, one member or several.
    Gzip,
    /// zstd, one frame or several.
    Zstd,
    /// Whatever the magic bytes say.
    Detect,
}

/// A path the helper could not reproduce, and why (device nodes, forbidden xattrs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Where the entry is, or would be (cut at 256 bytes).
    pub path: String,
    /// Why it is not.
    pub reason: String,
}

/// The helper's account of one applied layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    /// SHA-256 of the whole uncompressed stream.
    pub diff_id: Digest,
    /// Tar entries read.
    pub entries: u64,
    /// Uncompressed bytes, trailing data included.
    pub bytes: u64,
    /// What could not be reproduced: the first thousand paths, in entry order,
    pub skipped: Vec<Skipped>,
    /// and how many more there were.
    #[serde(default)]
    pub skipped_omitted: u64,
}

/// The helper's one answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// The job failed.
    Error {
        /// Why, in one line.
        error: String,
    },
    /// A layer was applied.
    Applied(Applied),
    /// A copy or clear is done.
    Done {
        /// Always true.
        done: bool,
    },
    /// An apply [`Onto::Parentless`] met an entry that needs the layers below.
    NeedsLowers {
        /// Which entry, and why.
        needs_lowers: String,
    },
}

/// A layer applied [`Onto::Parentless`] met an entry whose result depends on the layers below
/// it: the layer must be applied on top of them instead. What the helper replies as
/// [`Reply::NeedsLowers`], and the parent's error for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NeedsLowers(pub String);
