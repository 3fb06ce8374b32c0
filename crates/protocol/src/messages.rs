//! The request, the reply, and the fds they travel on.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::IdMap;

/// The fd on which the helper writes its one-line reply.
pub const RESULT_FD: i32 = 3;
/// The fd on which the helper reads the parent's word that its id maps are written.
pub const CONTROL_FD: i32 = 4;
/// The fd of a layer's ring (see `strata-ring`): shared memory the inflater (or strata) writes
/// the tar stream into and the applier reads it from, read-only. Its slots are announced on
/// the applier's stdin (the inflater's stdout).
pub const RING_FD: i32 = 5;
/// The fd on which the applier gives the ring's slots back to their writer.
pub const GIVEN_BACK_FD: i32 = 6;
/// With subordinate ids, the helper writes this byte on [`RESULT_FD`] once it has unshared
/// (before its reply), and waits for [`MAPS_READY`] on [`CONTROL_FD`]: only a process outside
/// the namespace can run `newuidmap` for it.
pub const MAPS_WANTED: [u8; 1] = *b"M";
/// The parent's word on [`CONTROL_FD`] that the helper's id maps are written.
pub const MAPS_READY: [u8; 1] = *b"R";

/// The helper program's one argument: which of its two roles a process plays.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The inflater: decompress the layer on stdin into the ring on [`RING_FD`], announcing
    /// its slots on stdout, holding nothing but those and the result pipe. It answers
    /// [`Reply::Inflated`] (or [`Reply::HungUp`]). It hashes nothing: the parent hashes the
    /// stream as it copies it into the applier's ring, so that no process that parses layer
    /// data (decompressor or tar reader) computes the diff ID. The value is what the layer's
    /// media type declares.
    Inflate(Compression),
    /// A job in the sandbox.
    Job(Request),
}

/// One job for the helper in its sandbox.
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
    /// Apply the tar stream in the ring on [`RING_FD`] `onto` `root`; with `also_to`, to that
    /// directory as well, in the same pass (a store's cold run fills DEST while it fills the
    /// snapshot, rather than copying it afterwards). The stream is read to its end, past tar's
    /// end block, and its length is part of the reply.
    Apply {
        /// Where the layer goes.
        onto: Onto,
        /// A second tree, written in the same pass.
        also_to: Option<PathBuf>,
        /// What `.wh.` names in the stream mean.
        whiteouts: Whiteouts,
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
    /// Look `user` (an image config's `User`: `user[:group]`, names or numbers) up in the
    /// `etc/passwd` and `etc/group` of the rootfs `root`, which is only read.
    LookUpUser {
        /// As the image config gives it.
        user: String,
    },
}

/// Who a process runs as, as a runtime's `config.json` says it. (No additional groups: runc
/// refuses them in a rootless container.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecUser {
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
}

/// What `.wh.` names in a tar stream mean: an image layer's whiteouts, or names like any
/// other (a plain archive, as `strata extract` takes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whiteouts {
    /// OCI layer semantics: `.wh.NAME` removes what lower layers have at NAME, `.wh..wh..opq`
    /// hides every lower entry of its directory.
    Apply,
    /// A plain archive: such entries are files, made as they are named.
    Keep,
}

/// The compression a layer's media type declares. The inflater checks it against the stream's
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

impl Compression {
    /// What the first bytes of a stream say it is. zstd skippable frames (`0x184D2A5?` little
    /// endian) open zstd:chunked layers.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else if head.starts_with(&ZSTD_MAGIC)
            || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
        {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// How many bytes [`Compression::sniff`] looks at.
    pub const MAGIC_LEN: usize = 4;

    /// The stream a blob holds, declared `self`, with `head` its first bytes, needs an
    /// inflater: it is declared compressed, or its magic says so.
    pub fn needs_inflating(self, head: &[u8]) -> bool {
        matches!(self, Compression::Gzip | Compression::Zstd)
            || Compression::sniff(head) != Compression::None
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A path the helper could not reproduce, and why (device nodes, forbidden xattrs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// Where the entry is, or would be (cut at 256 bytes).
    pub path: String,
    /// Why it is not.
    pub reason: String,
}

/// The applier's account of one applied layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    /// Tar entries read.
    pub entries: u64,
    /// Bytes of the stream read, trailing data included: the parent checks them against the
    /// bytes it put in the applier's ring.
    pub bytes: u64,
    /// What could not be reproduced: the first thousand paths, in entry order,
    pub skipped: Vec<Skipped>,
    /// and how many more there were.
    #[serde(default)]
    pub skipped_omitted: u64,
    /// The permission bits the layer's entry for `/` gives (its last, if several): not applied,
    /// as `/` is DEST's, but the mode a rootfs takes with `--root-mode image`.
    #[serde(default)]
    pub root_mode: Option<u32>,
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
    /// The inflater's account: the layer's stream was written out whole.
    Inflated {
        /// Its length.
        inflated: u64,
    },
    /// The inflater's account when its reader stopped reading: how many bytes it took.
    HungUp {
        /// Bytes written before the reader hung up.
        hung_up_after: u64,
    },
    /// The applier's failure when its stream ended inside the archive: either the archive is
    /// cut short, or the inflater failed, whose error then explains this one.
    CutShort {
        /// The applier's error, in one line.
        cut_short: String,
    },
    /// A copy or clear is done.
    Done {
        /// Always true.
        done: bool,
    },
    /// A user looked up ([`Op::LookUpUser`]).
    User {
        /// Who it is.
        user: ExecUser,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_needs_inflating() {
        let gzip = [0x1f, 0x8b, 8, 0];
        let zstd = [0x28, 0xb5, 0x2f, 0xfd];
        let skippable = [0x5e, 0x2a, 0x4d, 0x18];
        let tar = *b"etc/";
        for (declared, head, sniffed, needs) in [
            (Compression::None, &tar[..], Compression::None, false),
            (Compression::Detect, &tar[..], Compression::None, false),
            (Compression::None, &[][..], Compression::None, false),
            // Declared compressed: the inflater checks the magic and refuses.
            (Compression::Gzip, &tar[..], Compression::None, true),
            (Compression::Zstd, &tar[..], Compression::None, true),
            // Docker's `diff.tar` is often gzip.
            (Compression::None, &gzip[..], Compression::Gzip, true),
            (Compression::Detect, &zstd[..], Compression::Zstd, true),
            (Compression::Detect, &skippable[..], Compression::Zstd, true),
            (Compression::Gzip, &gzip[..1], Compression::None, true),
        ] {
            assert_eq!(Compression::sniff(head), sniffed, "{head:x?}");
            assert_eq!(
                declared.needs_inflating(head),
                needs,
                "{declared:?} {head:x?}"
            );
        }
    }
}
