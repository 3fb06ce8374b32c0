//! Which images the store has unpacked, and so which snapshots they need: the roots for
//! `strata gc` (as containerd's `gc.ref.snapshot` labels are).
//!
//! `STORE/images/<manifest hex>.json`, one per image, rewritten (by rename) on every use.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// What the store keeps of an unpacked image: what its snapshots are kept for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image as it was named, with an absolute layout path.
    pub reference: String,
    /// Its manifest's digest.
    pub manifest: Digest,
    /// Every layer's chain ID, bottom first: the snapshots this image needs.
    pub chain_ids: Vec<Digest>,
    /// Seconds since the epoch.
    pub last_used: u64,
}

pub(super) fn dir(store: &Path) -> PathBuf {
    store.join("images")
}

fn file(store: &Path, manifest: &Digest) -> PathBuf {
    dir(store).join(format!("{}.json", manifest.hex()))
}

/// Writes `record`, replacing any earlier one for the same manifest by a rename (the caller
/// holds the store lock, so the temporary name is free).
pub(super) fn write(store: &Path, record: &ImageRecord) -> Result<()> {
    let target = file(store, &record.manifest);
    let temporary = dir(store).join(format!(".{}.json.tmp", record.manifest.hex()));
    fs::write(&temporary, serde_json::to_vec_pretty(record)?)
        .and_then(|()| fs::rename(&temporary, &target))
        .with_context(|| {
            format!(
                "recording image {} in {}",
                record.reference,
                target.display()
            )
        })
}

pub(super) fn remove(store: &Path, manifest: &Digest) -> Result<()> {
    let path = file(store, manifest);
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Every recorded image. A missing store has none.
pub fn list(store: &Path) -> Result<Vec<ImageRecord>> {
    let entries = match fs::read_dir(dir(store)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listing the store's images"),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let record = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            records.push(record);
        }
    }
    records.sort_by(|a: &ImageRecord, b| a.reference.cmp(&b.reference));
    Ok(records)
}
