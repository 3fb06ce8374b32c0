//! The unpack pipeline: containerd's `rootfs.ApplyLayers`, made rootless. Resolve the image,
//! plan by chain ID, extract each missing layer into an active snapshot through the helper (in
//! order, or side by side into parentless snapshots with `jobs`), verify, commit; then produce
//! DEST from the top snapshot.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::dest::{self, Staging};
use crate::digest::Digest;
use crate::image::{self, Image, ImageRef, Layer, LayoutRef, Platform};
use crate::meter::Meter;
use crate::plan::{Plan, plan};
use crate::protocol::NeedsLowers;
use crate::protocol::{Applied, Onto, Skipped};
use crate::registry::PullOptions;
use crate::sandbox::{AppliedLayer, Blob, Helper, IdMapMode};
use crate::store::{Active, ImageRecord, SnapshotInfo, SnapshotterMode, Store, after_cleanup, now};

/// What `strata unpack` is asked.
#[derive(Clone, Debug)]
pub struct Options {
    /// `PATH`, `PATH:TAG`, `PATH@sha256:…` or `oci:PATH[:TAG]`: an OCI layout; or
    /// `docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]`: a registry.
    pub image: String,
    /// The root filesystem to make: missing, or an empty directory.
    pub dest: PathBuf,
    /// The snapshot store, or `None` to apply every layer straight into DEST.
    pub store: Option<PathBuf>,
    /// `os/arch[/variant]`; the host's platform when `None`.
    pub platform: Option<String>,
    /// Which ids the helper's namespaces map.
    pub idmap: IdMapMode,
    /// How a new store keeps snapshots.
    pub snapshotter: SnapshotterMode,
    /// The mode DEST gets.
    pub root_mode: RootMode,
    /// Missing layers a store (overlay snapshotter) extracts at once, each into a snapshot
    /// of its own, committed in order, DEST then copied from the store; 1: in order, each
    /// layer filling its snapshot and DEST in the same pass.
    pub jobs: usize,
    /// How registries are reached: credentials and TLS.
    pub pull: PullOptions,
}

/// The mode a new rootfs gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootMode {
    /// 0700: no other host user can reach anything inside, setuid files included; but inside
    /// a container, where `/` belongs to the container's root, neither can any other user of
    /// the image (a service that drops its privileges cannot start).
    #[default]
    Private,
    /// The mode the image gives `/` (its top-most layer's entry for `/`; 0755 when none has
    /// one), write for others and special bits left out: what a container expects, and what
    /// lets other host users reach its files.
    Image,
}

/// The mode images give `/` when none of their layers says, and the most DEST gets.
const IMAGE_ROOT_MODE: u32 = 0o755;

/// What `strata unpack --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Where the image came from, as the store records it: IMAGE with a layout's or an
    /// archive's path made absolute, a registry reference in full (`docker://HOST/REPO:TAG`).
    pub source: String,
    /// The image's manifest digest.
    pub manifest: Digest,
    /// The top layer's chain ID (`None` for an image without layers).
    pub chain_id: Option<Digest>,
    /// DEST, made absolute.
    pub rootfs: PathBuf,
    /// Each layer's account, bottom first.
    pub layers: Vec<LayerReport>,
}

/// One layer's account in a [`Report`].
#[derive(Debug, Serialize)]
pub struct LayerReport {
    /// The blob's digest.
    pub digest: Digest,
    /// The uncompressed stream's digest.
    pub diff_id: Digest,
    /// The snapshot's name.
    pub chain_id: Digest,
    /// The layer's snapshot was already committed: nothing was extracted.
    pub cached: bool,
    /// It was extracted side by side with others, into a snapshot without its parents.
    pub parentless: bool,
    /// The first thousand paths that could not be reproduced,
    pub skipped: Vec<Skipped>,
    /// and how many more there were (left out of the JSON report when none).
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_omitted: u64,
    /// The permission bits the layer's entry for `/` gives, if it has one (left out of the
    /// JSON report when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_mode: Option<u32>,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// Progress for a caller that wants to show it.
pub enum Progress<'a> {
    /// Layer `index` (from 0) of `count` is being extracted (side by side with others, with
    /// [`Options::jobs`]: then each layer of the batch is told at its start).
    Extracting {
        /// Which layer, from 0.
        index: usize,
        /// Of how many.
        count: usize,
        /// The layer.
        layer: &'a Layer,
        /// How much of its blob has been read (downloaded, from a registry), as it goes.
        meter: Meter,
    },
    /// Layer `index` of `count` is in the store already.
    Cached {
        /// Which layer, from 0.
        index: usize,
        /// Of how many.
        count: usize,
        /// The layer.
        layer: &'a Layer,
    },
    /// DEST is being copied from the store.
    Copying,
    /// Something the user should know that does not stop the unpack.
    Warning(String),
}

/// Unpacks `options.image` into `options.dest`, telling `progress` how it goes: the job of
/// `strata unpack`. On failure, DEST is not left behind and the store holds nothing new.
pub fn unpack(options: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let (reference, image) = resolve(options)?;
    unpack_image(options, &reference, &image, progress).map(|(report, _)| report)
}

/// The image `options` name, resolved for its platform.
pub(crate) fn resolve(options: &Options) -> Result<(ImageRef, Image)> {
    let reference = ImageRef::parse(&options.image)?;
    let platform = match &options.platform {
        Some(text) => Platform::parse(text)?,
        None => Platform::host(),
    };
    let image = image::resolve(&reference, &platform, &options.pull)?;
    Ok((reference, image))
}

/// [`unpack`] of the resolved `image`; also returns the helper it chose (and so the id map the
/// tree was made with).
pub(crate) fn unpack_image(
    options: &Options,
    reference: &ImageRef,
    image: &Image,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Report, Helper)> {
    let source = absolute(reference).to_string();
    let recorded = || match &options.store {
        Some(store) => Store::recorded_idmap(store),
        None => Ok(None),
    };
    let fill = |staging: &Staging, helper: &Helper, progress: &mut dyn FnMut(Progress)| {
        let layers = match &options.store {
            Some(store) => {
                let store = Store::open(store, helper.clone(), options.snapshotter)?;
                for warning in store.left_behind() {
                    progress(Progress::Warning(warning.clone()));
                }
                let layers =
                    unpack_with_store(&store, helper, image, staging, options.jobs, progress)?;
                store.record_image(&ImageRecord {
                    reference: source.clone(),
                    manifest: image.manifest_digest.clone(),
                    chain_ids: layers.iter().map(|layer| layer.chain_id.clone()).collect(),
                    last_used: now(),
                })?;
                layers
            }
            None => unpack_directly(helper, image, staging, progress)?,
        };
        if options.root_mode == RootMode::Image {
            let mode = layers.iter().rev().find_map(|layer| layer.root_mode);
            // What a layer says, but no more than 0755: no host user but this one may write
            // DEST, and `/` gets no setuid, setgid or sticky bit on the host.
            staging.set_mode(mode.unwrap_or(IMAGE_ROOT_MODE) & IMAGE_ROOT_MODE)?;
        }
        Ok(layers)
    };
    let (layers, helper) = dest::build(&options.dest, options.idmap, recorded, progress, fill)?;
    let report = Report {
        source,
        manifest: image.manifest_digest.clone(),
        chain_id: layers.last().map(|l| l.chain_id.clone()),
        rootfs: options.dest.clone(),
        layers,
    };
    Ok((report, helper))
}

/// `--no-store`: every layer goes straight into the staging directory. Each layer's helper is
/// started while the layer before is applied, so that its start (a few milliseconds, mostly
/// waiting on `newuidmap`) costs nothing; it waits for its blob until that layer is done.
fn unpack_directly(
    helper: &Helper,
    image: &Image,
    staging: &Staging,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<LayerReport>> {
    let plan = plan(&diff_ids(image), |_| false);
    let count = image.layers.len();
    // Started on this thread, which outlives them (see `Helper::start`); set up on another.
    let start = || -> Result<_> {
        let started = helper.start_apply(staging.path(), Onto::Plain, None)?;
        Ok(thread::spawn(move || started.set_up()))
    };
    let mut next = None;
    let mut reports = Vec::with_capacity(count);
    let outcome = (|| {
        next = (count > 0).then(start).transpose()?;
        for (index, (layer, chain_id)) in image.layers.iter().zip(&plan.chain_ids).enumerate() {
            let meter = Meter::default();
            progress(Progress::Extracting {
                index,
                count,
                layer,
                meter: meter.clone(),
            });
            let started = next
                .take()
                .expect("every layer's helper is started before its turn")
                .join()
                .expect("setting up a helper does not panic")
                .with_context(|| describe(image, index))?;
            next = (index + 1 < count).then(start).transpose()?;
            let applied = extract(image, index, &meter, |blob| started.apply(blob))?;
            reports.push(report(
                layer,
                chain_id.clone(),
                false,
                Outcome::Applied(&applied),
            ));
        }
        Ok(())
    })();
    // After a failure, the next layer's helper is killed (dropped unfinished) before DEST goes.
    if let Some(setting_up) = next {
        let _ = setting_up.join();
    }
    outcome.map(|()| reports)
}

fn unpack_with_store(
    store: &Store,
    helper: &Helper,
    image: &Image,
    staging: &Staging,
    jobs: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<LayerReport>> {
    let plan = plan(&diff_ids(image), |chain_id| store.committed(chain_id));
    let count = image.layers.len();
    let mut reports = Vec::with_capacity(count);
    for (index, layer) in image.layers.iter().enumerate().take(plan.first_missing) {
        progress(Progress::Cached {
            index,
            count,
            layer,
        });
        let chain_id = plan.chain_ids[index].clone();
        let info = store
            .info(&chain_id)
            .with_context(|| describe(image, index))?;
        reports.push(report(layer, chain_id, false, Outcome::Cached(info)));
    }
    if jobs > 1 && count - plan.first_missing > 1 && store.parentless_capable() {
        reports.extend(extract_side_by_side(store, image, &plan, jobs, progress)?);
        progress(Progress::Copying);
        return copy_to_dest(store, helper, &plan.chain_ids[count - 1], staging).map(|()| reports);
    }
    // DEST is the committed part of the chain copied, then every missing layer applied to it
    // in the same pass that fills the layer's snapshot: reading a fresh snapshot back to copy
    // it would cost as much again as extracting it.
    if let Some(cached_top) = plan.first_missing.checked_sub(1) {
        progress(Progress::Copying);
        copy_to_dest(store, helper, &plan.chain_ids[cached_top], staging)?;
    }
    for index in plan.first_missing..count {
        let layer = &image.layers[index];
        let meter = Meter::default();
        progress(Progress::Extracting {
            index,
            count,
            layer,
            meter: meter.clone(),
        });
        let applied = extract_on_parent(store, image, &plan, index, &meter, Some(staging))?;
        let chain_id = plan.chain_ids[index].clone();
        reports.push(report(layer, chain_id, false, Outcome::Applied(&applied)));
    }
    Ok(reports)
}

fn copy_to_dest(store: &Store, helper: &Helper, top: &Digest, staging: &Staging) -> Result<()> {
    helper
        .copy(&store.layers(top)?, staging.path())
        .context("copying the unpacked tree to the destination")
}

/// Extracts layer `index` into a snapshot on top of its committed parent (and into DEST, if
/// given, in the same pass), and commits it.
fn extract_on_parent(
    store: &Store,
    image: &Image,
    plan: &Plan,
    index: usize,
    meter: &Meter,
    also_to: Option<&Staging>,
) -> Result<Applied> {
    let parent = index.checked_sub(1).map(|below| &plan.chain_ids[below]);
    let active = store
        .prepare(parent)
        .with_context(|| describe(image, index))?;
    let applied = extract(image, index, meter, |blob| {
        let also_to = also_to.map(Staging::path);
        store.apply(&active, parent, also_to, blob)
    });
    match applied {
        Ok(applied) => {
            commit(store, image, plan, index, active, &applied)?;
            Ok(applied)
        }
        Err(err) => Err(after_cleanup(err, store.remove(active))),
    }
}

fn commit(
    store: &Store,
    image: &Image,
    plan: &Plan,
    index: usize,
    active: Active,
    applied: &Applied,
) -> Result<()> {
    let layer = &image.layers[index];
    let info = SnapshotInfo {
        chain_id: plan.chain_ids[index].clone(),
        parent: index
            .checked_sub(1)
            .map(|below| plan.chain_ids[below].clone()),
        diff_id: layer.diff_id.clone(),
        layer: layer.digest.clone(),
        created: now(),
        size: applied.bytes,
        skipped: applied.skipped.clone(),
        skipped_omitted: applied.skipped_omitted,
        root_mode: applied.root_mode,
    };
    store
        .commit(active, &info)
        .with_context(|| describe(image, index))
}

/// The missing layers, `jobs` at a time, each into a snapshot of its own: the first on top of
/// its committed parent, the others on top of nothing (parentless), which is what lets them
/// go side by side (containerd 2.2 does the same, outside a user namespace). They are
/// committed in order, each on top of the one before. A layer that turns out to need the
/// layers below it is applied again on top of them once they are committed; the first
/// failure stops the rest, and what is not committed is removed.
fn extract_side_by_side(
    store: &Store,
    image: &Image,
    plan: &Plan,
    jobs: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<LayerReport>> {
    let count = image.layers.len();
    let meters: Vec<Meter> = (0..count).map(|_| Meter::default()).collect();
    for (index, layer) in image.layers.iter().enumerate().skip(plan.first_missing) {
        progress(Progress::Extracting {
            index,
            count,
            layer,
            meter: meters[index].clone(),
        });
    }
    let next = AtomicUsize::new(plan.first_missing);
    let stop = AtomicBool::new(false);
    let (results, finished) = mpsc::channel();
    thread::scope(|scope| {
        for _ in 0..jobs.min(count - plan.first_missing) {
            let (results, next, stop, meters) = (results.clone(), &next, &stop, &meters);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        break;
                    }
                    let meter = &meters[index];
                    let extracted = if index == plan.first_missing {
                        extract_on_parent(store, image, plan, index, meter, None)
                            .map(Extracted::Committed)
                    } else {
                        extract_parentless(store, image, index, meter)
                    };
                    // The receiver stays until every worker is done.
                    let _ = results.send((index, extracted));
                }
            });
        }
        drop(results);
        let mut waiting = BTreeMap::new();
        let mut reports = Vec::new();
        let outcome = (plan.first_missing..count).try_for_each(|index| {
            let layer = &image.layers[index];
            let extracted = loop {
                if let Some(extracted) = waiting.remove(&index) {
                    break extracted;
                }
                let (done, extracted) = finished
                    .recv()
                    .expect("a worker reports every layer it takes");
                waiting.insert(done, extracted);
            };
            let (parentless, applied) = match extracted {
                Ok(Extracted::Parentless(active, applied)) => {
                    commit(store, image, plan, index, active, &applied)?;
                    (true, applied)
                }
                Ok(Extracted::Committed(applied)) => (false, applied),
                Err(err) if needs_lowers(&err) => (
                    false,
                    extract_on_parent(store, image, plan, index, &meters[index], None)?,
                ),
                Err(err) => return Err(err),
            };
            let chain_id = plan.chain_ids[index].clone();
            reports.push(report(
                layer,
                chain_id,
                parentless,
                Outcome::Applied(&applied),
            ));
            Ok(())
        });
        if let Err(err) = outcome {
            stop.store(true, Ordering::Relaxed);
            let leftovers = waiting
                .into_values()
                .chain(finished.iter().map(|(_, extracted)| extracted));
            let cleanup = leftovers
                .filter_map(|extracted| match extracted {
                    Ok(Extracted::Parentless(active, _)) => Some(active),
                    _ => None,
                })
                .try_for_each(|active| store.remove(active));
            return Err(after_cleanup(err, cleanup));
        }
        Ok(reports)
    })
}

/// A layer extracted by [`extract_side_by_side`].
enum Extracted {
    /// On top of its parent, and committed.
    Committed(Applied),
    /// Into a parentless snapshot, to commit once the layers below are.
    Parentless(Active, Applied),
}

/// Layer `index` into a new snapshot on top of nothing; fails with [`NeedsLowers`] if it
/// needs the layers below.
fn extract_parentless(
    store: &Store,
    image: &Image,
    index: usize,
    meter: &Meter,
) -> Result<Extracted> {
    let active = store
        .prepare(None)
        .with_context(|| describe(image, index))?;
    match extract(image, index, meter, |blob| {
        store.apply_parentless(&active, blob)
    }) {
        Ok(applied) => Ok(Extracted::Parentless(active, applied)),
        Err(err) => Err(after_cleanup(err, store.remove(active))),
    }
}

fn needs_lowers(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<NeedsLowers>())
}

/// Hands layer `index` to `apply` (helpers applying it somewhere), which checks the blob's
/// digest and size on the way, telling `meter` how far it has read; then checks the diff ID.
fn extract(
    image: &Image,
    index: usize,
    meter: &Meter,
    apply: impl FnOnce(&Blob) -> Result<AppliedLayer>,
) -> Result<Applied> {
    let layer = &image.layers[index];
    let run = || -> Result<Applied> {
        let input = image.source.open_blob(layer)?;
        let blob =
            Blob::new(input, &layer.digest, layer.size, layer.compression)?.metered(meter.clone());
        let AppliedLayer {
            diff_id, applied, ..
        } = apply(&blob)?;
        if diff_id != layer.diff_id {
            bail!(
                "diff ID mismatch: the config lists {} but the layer decompresses to {diff_id}",
                layer.diff_id,
            );
        }
        Ok(applied)
    };
    run().with_context(|| describe(image, index))
}

fn describe(image: &Image, index: usize) -> String {
    format!(
        "layer {}/{} ({})",
        index + 1,
        image.layers.len(),
        image.layers[index].digest
    )
}

/// `reference` with a layout's or an archive's path made absolute, as the store records it.
pub(crate) fn absolute(reference: &ImageRef) -> ImageRef {
    let absolute = |path: &PathBuf| std::fs::canonicalize(path).unwrap_or(path.clone());
    let layout = |LayoutRef { layout, selector }: &LayoutRef| LayoutRef {
        layout: absolute(layout),
        selector: selector.clone(),
    };
    match reference {
        ImageRef::Layout(reference) => ImageRef::Layout(layout(reference)),
        ImageRef::OciArchive(reference) => ImageRef::OciArchive(layout(reference)),
        ImageRef::DockerArchive { path, image } => ImageRef::DockerArchive {
            path: absolute(path),
            image: image.clone(),
        },
        ImageRef::Registry(_) => reference.clone(),
    }
}

fn diff_ids(image: &Image) -> Vec<Digest> {
    image
        .layers
        .iter()
        .map(|layer| layer.diff_id.clone())
        .collect()
}

/// How a layer came to be in place.
enum Outcome<'a> {
    /// Extracted now: the helper's account.
    Applied(&'a Applied),
    /// Found in the store: what its snapshot recorded when it was extracted.
    Cached(SnapshotInfo),
}

fn report(layer: &Layer, chain_id: Digest, parentless: bool, outcome: Outcome) -> LayerReport {
    let (cached, skipped, skipped_omitted, root_mode) = match outcome {
        Outcome::Applied(applied) => (
            false,
            applied.skipped.clone(),
            applied.skipped_omitted,
            applied.root_mode,
        ),
        Outcome::Cached(info) => (true, info.skipped, info.skipped_omitted, info.root_mode),
    };
    LayerReport {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        chain_id,
        cached,
        parentless,
        skipped,
        skipped_omitted,
        root_mode,
    }
}
