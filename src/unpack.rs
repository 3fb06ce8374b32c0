//! The unpack pipeline: the seed's `ApplyLayers`, made rootless (DESIGN §3). Resolve the image,
//! plan by chain ID, extract each missing layer into an active snapshot through the helper,
//! verify, commit; then produce DEST from the top snapshot.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::dest::Staging;
use crate::digest::Digest;
use crate::image::{self, Image, ImageRef, Layer, Platform};
use crate::plan::plan;
use crate::protocol::{Applied, Compression, Skipped};
use crate::sandbox::{Blob, Helper, IdMap, IdMapMode};
use crate::store::{ImageRecord, SnapshotInfo, SnapshotterMode, Store, after_cleanup, now};

#[derive(Clone, Debug)]
pub struct Options {
    /// `PATH`, `PATH:TAG`, `PATH@sha256:…` or `oci:PATH[:TAG]`.
    pub image: String,
    pub dest: PathBuf,
    /// The snapshot store, or `None` to apply every layer straight into DEST.
    pub store: Option<PathBuf>,
    /// `os/arch[/variant]`; the host's platform when `None`.
    pub platform: Option<String>,
    pub idmap: IdMapMode,
    pub snapshotter: SnapshotterMode,
}

/// What `strata unpack --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub manifest: Digest,
    /// The top layer's chain ID (`None` for an image without layers).
    pub chain_id: Option<Digest>,
    pub rootfs: PathBuf,
    pub layers: Vec<LayerReport>,
}

#[derive(Debug, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub diff_id: Digest,
    pub chain_id: Digest,
    /// The layer's snapshot was already committed: nothing was extracted.
    pub cached: bool,
    pub skipped: Vec<Skipped>,
}

/// Progress for a caller that wants to show it.
pub enum Progress<'a> {
    Extracting {
        index: usize,
        count: usize,
        layer: &'a Layer,
    },
    Cached {
        index: usize,
        count: usize,
        layer: &'a Layer,
    },
    Copying,
    /// Something the user should know that does not stop the unpack.
    Warning(String),
}

pub fn unpack(options: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    let reference = ImageRef::parse(&options.image)?;
    let platform = match &options.platform {
        Some(text) => Platform::parse(text)?,
        None => Platform::host(),
    };
    let image = image::resolve(&reference, &platform)?;
    let staging = Staging::create(&options.dest)?;
    // Until a helper is chosen, the staging directory is empty and needs none to go.
    let mut helper = Helper::locate(IdMap::Single)?;
    let layers = (|| {
        let recorded = match &options.store {
            Some(store) => Store::recorded_idmap(store)?,
            None => None,
        };
        let (chosen, warning) = Helper::choose(options.idmap, recorded, staging.path())?;
        helper = chosen;
        if let Some(warning) = warning {
            progress(Progress::Warning(warning));
        }
        staging.remove_dead_runs_debris(&helper)?;
        match &options.store {
            Some(store) => {
                let store = Store::open(store, helper.clone(), options.snapshotter)?;
                let layers = unpack_with_store(&store, &helper, &image, &staging, progress)?;
                store.record_image(&ImageRecord {
                    reference: absolute(&reference).to_string(),
                    manifest: image.manifest_digest.clone(),
                    chain_ids: layers.iter().map(|layer| layer.chain_id.clone()).collect(),
                    last_used: now(),
                })?;
                Ok(layers)
            }
            None => unpack_directly(&helper, &image, &staging, progress),
        }
    })();
    let layers = match layers {
        Ok(layers) => layers,
        Err(err) => return Err(after_cleanup(err, staging.discard(&helper))),
    };
    staging.publish()?;
    Ok(Report {
        manifest: image.manifest_digest.clone(),
        chain_id: layers.last().map(|l| l.chain_id.clone()),
        rootfs: options.dest.clone(),
        layers,
    })
}

/// `--no-store`: every layer goes straight into the staging directory.
fn unpack_directly(
    helper: &Helper,
    image: &Image,
    staging: &Staging,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<LayerReport>> {
    let plan = plan(&diff_ids(image), |_| false);
    let count = image.layers.len();
    let mut reports = Vec::with_capacity(count);
    for (index, (layer, chain_id)) in image.layers.iter().zip(plan.chain_ids).enumerate() {
        progress(Progress::Extracting {
            index,
            count,
            layer,
        });
        let applied = extract(image, index, |compression, blob| {
            helper.apply(staging.path(), None, None, compression, blob)
        })?;
        reports.push(report(layer, chain_id, false, applied.skipped));
    }
    Ok(reports)
}

fn unpack_with_store(
    store: &Store,
    helper: &Helper,
    image: &Image,
    staging: &Staging,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<LayerReport>> {
    let plan = plan(&diff_ids(image), |chain_id| store.committed(chain_id));
    let count = image.layers.len();
    // DEST is the committed part of the chain copied, then every missing layer applied to it
    // in the same pass that fills the layer's snapshot: reading a fresh snapshot back to copy
    // it would cost as much again as extracting it.
    if let Some(cached_top) = plan.first_missing.checked_sub(1) {
        progress(Progress::Copying);
        helper
            .copy(&store.layers(&plan.chain_ids[cached_top])?, staging.path())
            .context("copying the unpacked tree to the destination")?;
    }
    let mut reports = Vec::with_capacity(count);
    for (index, layer) in image.layers.iter().enumerate() {
        let chain_id = plan.chain_ids[index].clone();
        if index < plan.first_missing {
            progress(Progress::Cached {
                index,
                count,
                layer,
            });
            reports.push(report(layer, chain_id, true, Vec::new()));
            continue;
        }
        progress(Progress::Extracting {
            index,
            count,
            layer,
        });
        let parent = index.checked_sub(1).map(|below| &plan.chain_ids[below]);
        let active = store
            .prepare(parent)
            .with_context(|| describe(image, index))?;
        let applied = extract(image, index, |compression, blob| {
            store.apply(&active, parent, Some(staging.path()), compression, blob)
        });
        let applied = match applied {
            Ok(applied) => applied,
            Err(err) => return Err(after_cleanup(err, store.remove(active))),
        };
        let info = SnapshotInfo {
            chain_id: chain_id.clone(),
            parent: parent.cloned(),
            diff_id: layer.diff_id.clone(),
            layer: layer.digest.clone(),
            created: now(),
            size: applied.bytes,
        };
        store
            .commit(active, &info)
            .with_context(|| describe(image, index))?;
        reports.push(report(layer, chain_id, false, applied.skipped));
    }
    Ok(reports)
}

/// Hands layer `index` to `apply` (a helper applying it somewhere), which checks the blob's
/// digest and size on the way; then checks the diff ID.
fn extract(
    image: &Image,
    index: usize,
    apply: impl FnOnce(Compression, &Blob) -> Result<Applied>,
) -> Result<Applied> {
    let layer = &image.layers[index];
    let run = || -> Result<Applied> {
        let file = image.layout.open_blob(&layer.digest)?;
        let blob = Blob::new(file, &layer.digest, layer.size);
        let applied = apply(layer.compression, &blob)?;
        if applied.diff_id != layer.diff_id {
            bail!(
                "diff ID mismatch: the config lists {} but the layer decompresses to {}",
                layer.diff_id,
                applied.diff_id
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

/// `reference` with its layout path made absolute, as the store records it.
pub(crate) fn absolute(reference: &ImageRef) -> ImageRef {
    let layout = std::fs::canonicalize(&reference.layout).unwrap_or(reference.layout.clone());
    ImageRef {
        layout,
        selector: reference.selector.clone(),
    }
}

fn diff_ids(image: &Image) -> Vec<Digest> {
    image
        .layers
        .iter()
        .map(|layer| layer.diff_id.clone())
        .collect()
}

fn report(layer: &Layer, chain_id: Digest, cached: bool, skipped: Vec<Skipped>) -> LayerReport {
    LayerReport {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        chain_id,
        cached,
        skipped,
    }
}
