//! `strata extract`: any tar archive (sources, a toolchain, build artifacts; not an image layer)
//! into a new directory, by the same sandboxed helper and under the same path rules as a layer.
//! `.wh.` names are files like any other. DEST appears whole, or not at all, and with
//! [`ExtractOptions::sha256`], only for the archive that has that digest.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::dest::{self, Staging};
use crate::digest::{Digest, Expected};
use crate::protocol::{Compression, Skipped};
use crate::sandbox::{AppliedLayer, Blob, Helper, IdMapMode};
use crate::unpack::Progress;

/// What `strata extract` is asked.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Where the archive is read.
    pub archive: Archive,
    /// The directory to make: missing, or an empty directory.
    pub dest: PathBuf,
    /// The digest the archive, as read, must have; without it, any archive is extracted.
    pub sha256: Option<Digest>,
    /// What the archive is compressed with.
    pub compression: ArchiveCompression,
    /// Which ids the helper's namespaces map, and so which owners files get.
    pub idmap: IdMapMode,
}

/// Where an archive is read.
#[derive(Clone, Debug)]
pub enum Archive {
    /// A file.
    Path(PathBuf),
    /// The process's standard input (a file or a pipe).
    Stdin,
}

/// What an archive is compressed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveCompression {
    /// Whatever its first bytes say: gzip, zstd, or none.
    Auto,
    /// gzip: refused if the archive is not.
    Gzip,
    /// zstd: refused if the archive is not.
    Zstd,
    /// None: a tar archive, refused if its first bytes say gzip or zstd.
    None,
}

/// What `strata extract --json` prints.
#[derive(Debug, Serialize)]
pub struct ExtractReport {
    /// DEST.
    pub dest: PathBuf,
    /// The archive's digest, as read.
    pub archive: Digest,
    /// Its size.
    pub archive_bytes: u64,
    /// The digest of the tar stream it holds (the archive's own, when uncompressed).
    pub tar: Digest,
    /// Tar entries read.
    pub entries: u64,
    /// The first thousand paths that could not be reproduced,
    pub skipped: Vec<Skipped>,
    /// and how many more there were (left out of the JSON report when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_omitted: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// Extracts `options.archive` into `options.dest`; `progress` hears of warnings. On failure,
/// DEST is not left behind.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use strata::{Archive, ArchiveCompression, Digest, ExtractOptions, IdMapMode};
///
/// let options = ExtractOptions {
///     archive: Archive::Path("downloads/toolchain.tar.zst".into()),
///     dest: "build/toolchain".into(),
///     sha256: Some(Digest::parse(
///         "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
///     )?),
///     compression: ArchiveCompression::Auto,
///     idmap: IdMapMode::Single,
/// };
/// let report = strata::extract(&options, &mut |_| {})?;
/// println!("{} entries, tar stream {}", report.entries, report.tar);
/// # Ok(())
/// # }
/// ```
pub fn extract(
    options: &ExtractOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExtractReport> {
    let name = match &options.archive {
        Archive::Path(path) => format!("archive {}", path.display()),
        Archive::Stdin => "the archive on standard input".to_owned(),
    };
    extract_named(options, &name, progress).with_context(|| format!("extracting {name}"))
}

fn extract_named(
    options: &ExtractOptions,
    name: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExtractReport> {
    let blob = open(options, name)?;
    let extract = |staging: &Staging, helper: &Helper, _: &mut dyn FnMut(Progress)| {
        helper.extract(staging.path(), &blob)
    };
    let (
        AppliedLayer {
            blob,
            diff_id,
            applied,
        },
        _,
    ) = dest::build(&options.dest, options.idmap, || Ok(None), progress, extract)?;
    Ok(ExtractReport {
        dest: options.dest.clone(),
        archive: blob.digest,
        archive_bytes: blob.bytes,
        tar: diff_id,
        entries: applied.entries,
        skipped: applied.skipped,
        skipped_omitted: applied.skipped_omitted,
    })
}

/// The archive called `name`, to be read once.
fn open(options: &ExtractOptions, name: &str) -> Result<Blob> {
    let input = match &options.archive {
        Archive::Path(path) => File::open(path).context("opening it")?,
        Archive::Stdin => {
            let stdin = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .context("reading standard input")?;
            File::from(stdin)
        }
    };
    let expected = match &options.sha256 {
        Some(digest) => Expected::Digest(digest.clone()),
        None => Expected::Anything,
    };
    let compression = match options.compression {
        ArchiveCompression::Auto => Compression::Detect,
        ArchiveCompression::Gzip => Compression::Gzip,
        ArchiveCompression::Zstd => Compression::Zstd,
        ArchiveCompression::None => Compression::None,
    };
    let blob = Blob::archive(input, name.to_owned(), expected, compression)?;
    if options.compression == ArchiveCompression::None && blob.needs_inflating()? {
        bail!("it starts as gzip or zstd does, yet was said to be uncompressed");
    }
    Ok(blob)
}
