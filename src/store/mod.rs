//! The snapshot store: snapshots named by chain ID, made by one of two snapshotters.
//! *Native*: every committed snapshot is a full tree, a copy of its parent with the layer
//! applied; works on any filesystem. *Overlay*: a committed snapshot holds only its layer's
//! changes (overlayfs format: whiteouts are 0/0 devices, opaque directories carry
//! `user.overlay.opaque`); the layer is applied through a rootless overlay mount of its parent
//! chain inside the helper, and trees are read through the same kind of mount. It is the
//! default where the kernel allows it, probed once when the store is created.
//!
//! ```text
//! STORE/lock                      held exclusively by the running strata
//! STORE/store.json                the id map and snapshotter all snapshots were made with
//! STORE/snapshots/<chain hex>/    committed: fs/ (the tree or the layer's diff) and info.json
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
use crate::protocol::{Onto, Overlay, Skipped};
use crate::sandbox::{AppliedLayer, Blob, Helper, IdMap};
pub use images::ImageRecord;

/// `STORE/store.json`: what holds for every snapshot in the store.
const CONFIG: &str = "store.json";

#[derive(Serialize, Deserialize)]
struct StoreConfig {
    /// The id map every snapshot was made with.
    idmap: IdMap,
    snapshotter: Snapshotter,
}

/// How a store keeps snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Snapshotter {
    /// Each snapshot a full tree, prepared as a copy of its parent.
    Native,
    /// Each snapshot the layer's changes alone, applied through an overlay of its parents.
    Overlay,
}

/// What the user asked for with `--snapshotter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotterMode {
    /// The store's own; for a new store, overlay where it works, else native.
    #[default]
    Auto,
    /// A full tree per snapshot: works on any filesystem.
    Native,
    /// Each snapshot the layer's changes alone, applied through a rootless overlay mount; an
    /// error where that does not work.
    Overlay,
}

/// What the store keeps about a committed snapshot, beside its tree.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// What names it.
    pub chain_id: Digest,
    /// The snapshot below it.
    pub parent: Option<Digest>,
    /// Its layer's uncompressed digest.
    pub diff_id: Digest,
    /// The compressed blob it was extracted from.
    pub layer: Digest,
    /// Seconds since the epoch.
    pub created: u64,
    /// Bytes of the layer's uncompressed stream.
    #[serde(default)]
    pub size: u64,
    /// What the layer could not reproduce, as its extraction reported it: a later run that
    /// finds the snapshot reports the same.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// How many more there were.
    #[serde(default)]
    pub skipped_omitted: u64,
    /// The mode the layer's entry for `/` gives, if it has one.
    #[serde(default)]
    pub root_mode: Option<u32>,
}

/// A store of snapshots by chain ID, open and locked.
pub struct Store {
    root: PathBuf,
    helper: Helper,
    snapshotter: Snapshotter,
    /// Held for the store's lifetime: two strata processes never change one store at once.
    _lock: File,
    /// What could not be removed from `tmp/`, and why: it stays, and the store works on.
    left_behind: Vec<String>,
}

/// A snapshot being written: unique to this attempt, invisible under any chain ID.
pub struct Active {
    dir: PathBuf,
}

impl Active {
    /// The snapshot's own tree: everything (native), or the layer's changes (overlay).
    fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }

    /// overlayfs's scratch directory.
    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Where the helper mounts the overlay it applies the layer to.
    fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
}

impl Store {
    /// Opens (creating, mode 0700) the store at `root`, waits for its lock, and removes the
    /// debris of runs that died.
    pub fn open(root: &Path, helper: Helper, snapshotter: SnapshotterMode) -> Result<Store> {
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
        let mut store = Store {
            root: root.to_path_buf(),
            helper,
            snapshotter: Snapshotter::Native,
            _lock: lock,
            left_behind: Vec::new(),
        };
        store.remove_debris()?;
        store.snapshotter = store.check_config(snapshotter)?;
        Ok(store)
    }

    /// The id map the store's snapshots were made with, if it has any.
    pub fn recorded_idmap(root: &Path) -> Result<Option<IdMap>> {
        Ok(Store::config(root)?.map(|config| config.idmap))
    }

    fn config(root: &Path) -> Result<Option<StoreConfig>> {
        let file = root.join(CONFIG);
        match fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading {}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
        }
    }

    /// Checks the helper's id map and the wanted snapshotter against what the store records,
    /// or records them in a new store: snapshots made two ways never meet in one store.
    fn check_config(&self, wanted: SnapshotterMode) -> Result<Snapshotter> {
        let idmap = self.helper.idmap();
        if let Some(config) = Store::config(&self.root)? {
            if config.idmap != idmap {
                bail!(
                    "store {} holds snapshots made with the {} map, not {idmap}; use another \
                     --store for this mapping",
                    self.root.display(),
                    config.idmap
                );
            }
            let clash = match wanted {
                SnapshotterMode::Auto => None,
                SnapshotterMode::Native => Some(Snapshotter::Native),
                SnapshotterMode::Overlay => Some(Snapshotter::Overlay),
            };
            if clash.is_some_and(|wanted| wanted != config.snapshotter) {
                bail!(
                    "store {} uses the {:?} snapshotter; use another --store for the other one",
                    self.root.display(),
                    config.snapshotter
                );
            }
            return Ok(config.snapshotter);
        }
        let snapshotter = match wanted {
            SnapshotterMode::Native => Snapshotter::Native,
            SnapshotterMode::Overlay => {
                if let Err(why) = self.probe_overlay()? {
                    return Err(why.context("the overlay snapshotter does not work here"));
                }
                Snapshotter::Overlay
            }
            SnapshotterMode::Auto => match self.probe_overlay()? {
                Ok(()) => Snapshotter::Overlay,
                Err(_) => Snapshotter::Native,
            },
        };
        let config = serde_json::to_vec_pretty(&StoreConfig { idmap, snapshotter })?;
        let file = self.root.join(CONFIG);
        // Beside the target, not in tmp/: tmp/ holds only active snapshots. A leftover from a
        // crash is overwritten next time (under the lock).
        let temporary = self.root.join(format!(".{CONFIG}.tmp"));
        fs::write(&temporary, config)
            .and_then(|()| fs::rename(&temporary, &file))
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(snapshotter)
    }

    /// Applies an empty layer through an overlay mount in a scratch snapshot: whether this
    /// kernel, this filesystem and this user may mount overlays as the helper does (the inner
    /// result). A helper that cannot run at all is the outer error: that says nothing about
    /// overlays, and must not settle the store's snapshotter.
    fn probe_overlay(&self) -> Result<Result<()>> {
        let probe = Active {
            dir: self.tmp().join(unique_key()),
        };
        let lower = probe.dir.join("lower");
        let result = (|| -> Result<Result<()>> {
            for dir in [
                &probe.dir,
                &probe.fs(),
                &probe.work(),
                &probe.merged(),
                &lower,
            ] {
                fs::create_dir(dir)?;
            }
            self.helper.clear(&lower)?;
            let overlay = Overlay {
                lowers: vec![lower.clone()],
                upper: probe.fs(),
                work: probe.work(),
            };
            let empty_layer = Blob::empty()?;
            let merged = probe.merged();
            Ok(self
                .helper
                .apply(&merged, Onto::Overlay(overlay), None, &empty_layer)
                .map(drop))
        })();
        // Part by part: if the helper cannot even start, the parts are empty and need none.
        let cleanup = self
            .helper
            .remove_dir(&lower)
            .and_then(|()| self.remove(probe));
        match result {
            Ok(overlay_works) => cleanup.map(|()| overlay_works),
            Err(err) => Err(after_cleanup(err, cleanup)),
        }
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn snapshot_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain_id.hex())
    }

    /// Removes what earlier runs left in `tmp/`. What cannot be removed stays there, noted in
    /// [`Store::left_behind`]: nothing in `tmp/` is under a chain ID, so it costs only disk.
    fn remove_debris(&mut self) -> Result<()> {
        for entry in fs::read_dir(self.tmp()).context("listing the store's tmp directory")? {
            let entry = entry?;
            let path = entry.path();
            let removed = if entry.file_type()?.is_dir() {
                self.helper.remove_dir(&path)
            } else {
                fs::remove_file(&path).map_err(Into::into)
            };
            if let Err(err) = removed {
                self.leave_behind(&path, err);
            }
        }
        Ok(())
    }

    fn leave_behind(&mut self, path: &Path, err: anyhow::Error) {
        self.left_behind.push(format!(
            "could not remove {} ({err:#}); it stays in the store's tmp/, for `strata rmtree`",
            path.display()
        ));
    }

    /// What this store could not remove from its `tmp/`, and why, one line each.
    pub fn left_behind(&self) -> &[String] {
        &self.left_behind
    }

    /// Whether the snapshot `chain_id` is committed.
    pub fn committed(&self, chain_id: &Digest) -> bool {
        self.snapshot_dir(chain_id).is_dir()
    }

    /// The directories that make up the tree of snapshot `chain_id`, top first: its own tree
    /// (native), or its diff and those of all its ancestors (overlay).
    pub fn layers(&self, chain_id: &Digest) -> Result<Vec<PathBuf>> {
        let mut layers = Vec::new();
        let mut next = Some(chain_id.clone());
        while let Some(chain_id) = next {
            let dir = self.snapshot_dir(&chain_id);
            if !dir.is_dir() {
                bail!("snapshot {chain_id} is not committed");
            }
            layers.push(dir.join("fs"));
            next = match self.snapshotter {
                Snapshotter::Native => None,
                Snapshotter::Overlay => self.info(&chain_id)?.parent,
            };
        }
        Ok(layers)
    }

    /// What the committed snapshot `chain_id` records of itself.
    pub fn info(&self, chain_id: &Digest) -> Result<SnapshotInfo> {
        let path = self.snapshot_dir(chain_id).join("info.json");
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    /// A new active snapshot to apply a layer on top of `parent` (or of nothing). The native
    /// snapshotter copies the parent's tree into it; the overlay one needs nothing of it yet.
    pub fn prepare(&self, parent: Option<&Digest>) -> Result<Active> {
        let active = Active {
            dir: self.tmp().join(unique_key()),
        };
        let mut dirs = vec![(active.dir.clone(), 0o700), (active.fs(), 0o755)];
        if self.snapshotter == Snapshotter::Overlay && parent.is_some() {
            dirs.extend([(active.work(), 0o700), (active.merged(), 0o700)]);
        }
        for (dir, mode) in dirs {
            DirBuilder::new()
                .mode(mode)
                .create(&dir)
                .with_context(|| format!("creating active snapshot {}", active.dir.display()))?;
        }
        if let (Snapshotter::Native, Some(parent)) = (self.snapshotter, parent)
            && let Err(err) = self
                .layers(parent)
                .and_then(|source| self.helper.copy(&source, &active.fs()))
        {
            let err = err.context(format!("copying snapshot {parent}"));
            return Err(after_cleanup(err, self.remove(active)));
        }
        Ok(active)
    }

    /// Applies the layer read from `blob` to `active`, prepared on top of `parent`, and in the
    /// same pass to the tree `also_to` (see [`Helper::apply`]).
    pub fn apply(
        &self,
        active: &Active,
        parent: Option<&Digest>,
        also_to: Option<&Path>,
        blob: &Blob,
    ) -> Result<AppliedLayer> {
        match (self.snapshotter, parent) {
            (Snapshotter::Overlay, Some(parent)) => {
                let overlay = Overlay {
                    lowers: self.layers(parent)?,
                    upper: active.fs(),
                    work: active.work(),
                };
                let merged = active.merged();
                self.helper
                    .apply(&merged, Onto::Overlay(overlay), also_to, blob)
            }
            _ => self.helper.apply(&active.fs(), Onto::Plain, also_to, blob),
        }
    }

    /// Whether layers can be applied without their parents ([`Store::apply_parentless`]).
    pub fn parentless_capable(&self) -> bool {
        self.snapshotter == Snapshotter::Overlay
    }

    /// Applies the layer read from `blob` to `active`, prepared on top of nothing, as the
    /// overlay snapshot of a layer whose parents are not there yet: committed on top of them
    /// later, it holds what it would have held applied on top of them. Fails with
    /// [`crate::protocol::NeedsLowers`] when that cannot be known without them.
    pub fn apply_parentless(&self, active: &Active, blob: &Blob) -> Result<AppliedLayer> {
        assert!(
            self.parentless_capable(),
            "only overlay snapshots can be parentless"
        );
        self.helper
            .apply(&active.fs(), Onto::Parentless, None, blob)
    }

    /// Publishes `active` under `info.chain_id`. A snapshot another run committed first wins:
    /// both hold the same verified content.
    pub fn commit(&self, active: Active, info: &SnapshotInfo) -> Result<()> {
        // overlayfs's scratch and mount point are not part of the snapshot. The scratch holds
        // only directories overlayfs made as the namespace's root, that is, as the user: no
        // helper is needed to remove them, short of a surprise.
        if fs::remove_dir_all(active.work()).is_err() {
            self.helper.remove_dir(&active.work())?;
        }
        self.helper.remove_dir(&active.merged())?;
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
    pub fn collect_garbage(&mut self) -> Result<Vec<SnapshotInfo>> {
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
            if let Err(err) = self.helper.remove_dir(&doomed) {
                self.leave_behind(&doomed, err);
            }
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
        // The parts first: when they are still empty, no helper is needed at all.
        [
            active.fs(),
            active.work(),
            active.merged(),
            active.dir.clone(),
        ]
        .iter()
        .try_for_each(|dir| self.helper.remove_dir(dir))
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

/// Seconds since the epoch.
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
