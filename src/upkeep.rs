//! The upkeep commands: see what the store holds, forget images, collect the
//! snapshots nothing needs, and remove trees strata made. Removal always runs in a helper with
//! the store's id map, so subordinate-owned and mode-000 trees go too.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::path::Path;
//!
//! let store = Path::new("/var/cache/build/strata");
//! for snapshot in strata::upkeep::list(store)? {
//!     println!("{} {} bytes, used by {:?}", snapshot.chain_id, snapshot.size, snapshot.images);
//! }
//! strata::upkeep::forget(store, "/srv/images/old:1.0")?;
//! let collected = strata::upkeep::gc(store)?;
//! println!("freed {} bytes", collected.size);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::digest::Digest;
use crate::image::{self, ImageRef, Platform};
use crate::registry::PullOptions;
use crate::sandbox::{Helper, IdMap, IdMapMode};
pub use crate::store::ImageRecord;
use crate::store::{SnapshotterMode, Store};
use crate::unpack::absolute;

/// One committed snapshot, as `strata ls` shows it.
#[derive(Debug, Serialize)]
pub struct SnapshotListing {
    /// What names it.
    pub chain_id: Digest,
    /// The snapshot below it.
    pub parent: Option<Digest>,
    /// Bytes of its layer's uncompressed stream.
    pub size: u64,
    /// Seconds since the epoch it was committed.
    pub created: u64,
    /// Seconds since the epoch an image needing it was last unpacked (else `created`).
    pub last_used: u64,
    /// The recorded images that need it.
    pub images: Vec<String>,
}

/// The snapshots of the store at `store`, oldest first.
pub fn list(store: &Path) -> Result<Vec<SnapshotListing>> {
    let images = Store::images(store)?;
    let mut users: BTreeMap<&Digest, Vec<&ImageRecord>> = BTreeMap::new();
    for image in &images {
        for chain_id in &image.chain_ids {
            users.entry(chain_id).or_default().push(image);
        }
    }
    let listings = Store::snapshots(store)?
        .into_iter()
        .map(|info| {
            let users = users
                .get(&info.chain_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            SnapshotListing {
                last_used: users
                    .iter()
                    .map(|u| u.last_used)
                    .max()
                    .unwrap_or(info.created),
                images: users.iter().map(|u| u.reference.clone()).collect(),
                chain_id: info.chain_id,
                parent: info.parent,
                size: info.size,
                created: info.created,
            }
        })
        .collect();
    Ok(listings)
}

/// Forgets the recorded images that `image` names: as recorded (`PATH[:TAG]`, the path made
/// absolute), by manifest digest, or by what the layout resolves it to now. Returns them.
pub fn forget(store: &Path, image: &str) -> Result<Vec<ImageRecord>> {
    let by_digest = Digest::parse(image).ok();
    let reference = ImageRef::parse(image).ok();
    let by_reference = reference.as_ref().map(|r| absolute(r).to_string());
    // A layout or an archive is read again; a registry is not asked.
    let by_content = reference
        .as_ref()
        .filter(|r| !matches!(r, ImageRef::Registry(_)))
        .and_then(|r| image::resolve(r, &Platform::host(), &PullOptions::default()).ok())
        .map(|resolved| resolved.manifest_digest);
    let doomed: Vec<ImageRecord> = Store::images(store)?
        .into_iter()
        .filter(|record| {
            Some(&record.manifest) == by_digest.as_ref()
                || Some(&record.reference) == by_reference.as_ref()
                || Some(&record.manifest) == by_content.as_ref()
        })
        .collect();
    if doomed.is_empty() {
        bail!(
            "no image {image} is recorded in store {} (`strata ls` lists them)",
            store.display()
        );
    }
    // Only now the lock (and a helper): a store that records nothing is left alone.
    let store = open(store)?;
    for record in &doomed {
        store.forget_image(&record.manifest)?;
    }
    Ok(doomed)
}

/// What `strata gc` removed.
#[derive(Debug, Serialize)]
pub struct Collected {
    /// The snapshots removed, by chain ID.
    pub snapshots: Vec<Digest>,
    /// What could not be removed (it stays in the store's `tmp/`), one line each.
    pub left_behind: Vec<String>,
    /// Bytes of the removed snapshots' layers, uncompressed.
    pub size: u64,
}

/// Removes crash debris and every snapshot no recorded image needs.
pub fn gc(store: &Path) -> Result<Collected> {
    if !store.join("snapshots").is_dir() {
        return Ok(Collected {
            snapshots: Vec::new(),
            left_behind: Vec::new(),
            size: 0,
        });
    }
    let mut store = open(store)?;
    let removed = store.collect_garbage()?;
    Ok(Collected {
        size: removed.iter().map(|info| info.size).sum(),
        snapshots: removed.into_iter().map(|info| info.chain_id).collect(),
        left_behind: store.left_behind().to_vec(),
    })
}

/// The store at `root`, locked, with a helper of its id map (opening also removes debris).
fn open(root: &Path) -> Result<Store> {
    let idmap = Store::recorded_idmap(root)?.unwrap_or(IdMap::Single);
    Store::open(root, Helper::locate(idmap)?, SnapshotterMode::Auto)
}

/// Removes the directory `path` and everything in it, whatever owners and modes it holds,
/// inside a user namespace (subordinate ids when they work, as `mode` allows). Returns a
/// warning when subordinate ids could not be used.
pub fn rmtree(path: &Path, mode: IdMapMode) -> Result<Option<String>> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot remove {}", path.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory (rmtree removes directory trees)",
            path.display()
        );
    }
    let absolute = fs::canonicalize(path)?;
    let Some(parent) = absolute.parent() else {
        bail!("refusing to remove /");
    };
    // Trying subordinate ids needs an empty directory; beside PATH, where we must write anyway.
    let probe = parent.join(format!(".strata-probe-{}", std::process::id()));
    fs::create_dir(&probe).with_context(|| format!("cannot write in {}", parent.display()))?;
    let chosen = Helper::choose(mode, None, &probe);
    fs::remove_dir(&probe).with_context(|| format!("removing {}", probe.display()))?;
    let (helper, warning) = chosen?;
    helper.remove_dir(&absolute)?;
    Ok(warning)
}
