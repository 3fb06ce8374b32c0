//! The snapshot store, native snapshotter: every committed snapshot is a full tree, named by
//! its chain ID (DESIGN §3).
//!
//! ```text
//! STORE/lock                      held exclusively by the running strata
//! STORE/store.json                the id map all snapshots were made with
//! STORE/snapshots/<chain hex>/    committed: fs/ (the tree) and info.json
//! STORE/images/<manifest hex>.json  the images unpacked, and the chain IDs each needs
//! STORE/tmp/extract-<unique>/     active snapshots; whatever is here at start is crash debris
//! ```
//! Commit is a rename, so a snapshot is either whole under its chain ID or not there.

mod images;

use std::fs::{self, DirBuilder, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::sandbox::{Helper, IdMap};
pub use images::ImageRecord;

/// `STORE/store.json`: what holds for every snapshot in the store.
const CONFIG: &str = "store.json";

#[derive(Serialize, Deserialize)]
struct StoreConfig {
    /// The id map every snapshot was made with.
    idmap: IdMap,
}

/// What the store keeps about a committed snapshot, beside its tree.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    pub diff_id: Digest,
    /// The compressed blob it was extracted from.
    pub layer: Digest,
    /// Seconds since the epoch.
    pub created: u64,
    /// Bytes of the layer's uncompressed stream.
    #[serde(default)]
    pub size: u64,
}

pub struct Store {
    root: PathBuf,
    helper: Helper,
    /// Held for the store's lifetime: two strata processes never change one store at once.
    _lock: File,
}

/// A snapshot being written: unique to this attempt, invisible under any chain ID.
pub struct Active {
    dir: PathBuf,
}

impl Active {
    /// The tree the layer is applied to.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Store {
    /// Opens (creating, mode 0700) the store at `root`, waits for its lock, and removes the
    /// debris of runs that died.
    pub fn open(root: &Path, helper: Helper) -> Result<Store> {
        let private = |dir: &Path| {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating store directory {}", dir.display()))
        };
        private(root)?;
        private(&root.join("snapshots"))?;
        private(&root.join("tmp"))?;
        private(&images::dir(root))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .with_context(|| format!("opening the lock of store {}", root.display()))?;
        lock.lock()
            .with_context(|| format!("locking store {}", root.display()))?;
        let store = Store {
            root: root.to_path_buf(),
            helper,
            _lock: lock,
        };
        store.check_idmap()?;
        store.remove_debris()?;
        Ok(store)
    }

    /// The id map the store's snapshots were made with, if it has any.
    pub fn recorded_idmap(root: &Path) -> Result<Option<IdMap>> {
        let file = root.join(CONFIG);
        match fs::read(&file) {
            Ok(bytes) => {
                let config: StoreConfig = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", file.display()))?;
                Ok(Some(config.idmap))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }

    /// Records the helper's id map in a new store, or checks it against the recorded one:
    /// snapshots made under two mappings never meet in one store.
    fn check_idmap(&self) -> Result<()> {
        let wanted = self.helper.idmap();
        match Store::recorded_idmap(&self.root)? {
            Some(recorded) if recorded == wanted => Ok(()),
            Some(recorded) => bail!(
                "store {} holds snapshots made with the {recorded} map, not {wanted}; use \
                 another --store for this mapping",
                self.root.display()
            ),
            None => {
                let config = serde_json::to_vec_pretty(&StoreConfig { idmap: wanted })?;
                let file = self.root.join(CONFIG);
                // Beside the target, not in tmp/: tmp/ holds only active snapshots. A leftover
                // from a crash is overwritten next time (under the lock).
                let temporary = self.root.join(format!(".{CONFIG}.tmp"));
                fs::write(&temporary, config)
                    .and_then(|()| fs::rename(&temporary, &file))
                    .with_context(|| format!("writing {}", file.display()))
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn snapshot_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain_id.hex())
    }

    fn remove_debris(&self) -> Result<()> {
        for entry in fs::read_dir(self.tmp()).context("listing the store's tmp directory")? {
            let entry = entry?;
            let path = entry.path();
            let removed = if entry.file_type()?.is_dir() {
                self.helper.remove_dir(&path)
            } else {
                fs::remove_file(&path).map_err(Into::into)
            };
            removed
                .with_context(|| format!("removing debris {} of an earlier run", path.display()))?;
        }
        Ok(())
    }

    /// The tree of the committed snapshot `chain_id`, if there is one.
    pub fn committed(&self, chain_id: &Digest) -> Option<PathBuf> {
        let dir = self.snapshot_dir(chain_id);
        dir.is_dir().then(|| dir.join("fs"))
    }

    /// A new active snapshot holding a copy of `parent` (or empty).
    pub fn prepare(&self, parent: Option<&Digest>) -> Result<Active> {
        let active = Active {
            dir: self.tmp().join(unique_key()),
        };
        let fs_dir = active.fs();
        DirBuilder::new()
            .mode(0o700)
            .create(&active.dir)
            .and_then(|()| DirBuilder::new().mode(0o755).create(&fs_dir))
            .with_context(|| format!("creating active snapshot {}", active.dir.display()))?;
        if let Some(parent) = parent {
            let source = self
                .committed(parent)
                .with_context(|| format!("parent snapshot {parent} is not committed"))?;
            if let Err(err) = self.helper.copy(&source, &fs_dir) {
                let err = err.context(format!("copying snapshot {parent}"));
                return Err(after_cleanup(err, self.remove(active)));
            }
        }
        Ok(active)
    }

    /// Publishes `active` under `info.chain_id`. A snapshot another run committed first wins:
    /// both hold the same verified content.
    pub fn commit(&self, active: Active, info: &SnapshotInfo) -> Result<()> {
        let record = serde_json::to_vec_pretty(info)?;
        fs::write(active.dir.join("info.json"), record).context("writing snapshot info")?;
        match fs::rename(&active.dir, self.snapshot_dir(&info.chain_id)) {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                self.remove(active)
            }
            Err(e) => Err(e).with_context(|| format!("committing snapshot {}", info.chain_id)),
        }
    }

    /// Notes that `record`'s image was unpacked: its snapshots are now in use.
    pub fn record_image(&self, record: &ImageRecord) -> Result<()> {
        images::write(&self.root, record)
    }

    /// Forgets an image; its snapshots stay until `gc` finds nothing else needs them.
    pub fn forget_image(&self, manifest: &Digest) -> Result<()> {
        images::remove(&self.root, manifest)
    }

    /// Removes every committed snapshot no recorded image needs; returns their infos.
    pub fn collect_garbage(&self) -> Result<Vec<SnapshotInfo>> {
        let needed: std::collections::HashSet<Digest> = images::list(&self.root)?
            .into_iter()
            .flat_map(|image| image.chain_ids)
            .collect();
        let mut removed = Vec::new();
        for info in Store::snapshots(&self.root)? {
            if needed.contains(&info.chain_id) {
                continue;
            }
            // Unpublish first (one rename), so a crash midway leaves debris, not a half tree
            // under a chain ID.
            let doomed = self.tmp().join(format!("gc-{}", info.chain_id.hex()));
            fs::rename(self.snapshot_dir(&info.chain_id), &doomed)
                .with_context(|| format!("removing snapshot {}", info.chain_id))?;
            self.helper
                .remove_dir(&doomed)
                .with_context(|| format!("removing snapshot {}", info.chain_id))?;
            removed.push(info);
        }
        Ok(removed)
    }

    /// The committed snapshots of the store at `root` (none if there is no store), read
    /// without the lock: commits are renames, so what is listed is whole.
    pub fn snapshots(root: &Path) -> Result<Vec<SnapshotInfo>> {
        let entries = match fs::read_dir(root.join("snapshots")) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("listing the store's snapshots"),
        };
        let mut infos = Vec::new();
        for entry in entries {
            let path = entry?.path().join("info.json");
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let info: SnapshotInfo = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            infos.push(info);
        }
        infos.sort_by_key(|info| info.created);
        Ok(infos)
    }

    /// The images recorded in the store at `root`.
    pub fn images(root: &Path) -> Result<Vec<ImageRecord>> {
        images::list(root)
    }

    /// Discards an active snapshot.
    pub fn remove(&self, active: Active) -> Result<()> {
        // The tree first: when it is still empty, no helper is needed at all.
        let fs_dir = active.fs();
        self.helper
            .remove_dir(&fs_dir)
            .and_then(|()| self.helper.remove_dir(&active.dir))
            .with_context(|| format!("removing active snapshot {}", active.dir.display()))
    }
}

/// `extract-<pid>-<nanos>-<counter>`: unique across processes and attempts, as containerd's
/// `extract-<nanos>-<random> <chainID>` keys are.
fn unique_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "extract-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `err`, with a note when cleaning up after it failed too: the first failure is what the user
/// needs to read first.
pub(crate) fn after_cleanup(err: anyhow::Error, cleanup: Result<()>) -> anyhow::Error {
    match cleanup {
        Ok(()) => err,
        Err(cleanup) => anyhow::anyhow!("{err:#} (cleaning up afterwards failed too: {cleanup:#})"),
    }
}
