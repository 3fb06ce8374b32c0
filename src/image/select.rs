//! Choosing the manifest a reference means: in a layout, an entry of `index.json` by tag,
//! digest or default; then, through any nested indexes, the entry for the wanted platform.
//!
//! The platform only chooses between alternatives, as with `docker pull`: an index must offer
//! the wanted platform, but a manifest that is the only candidate is taken whatever its
//! platform, since unpacking a foreign image is a legitimate thing to do.

use std::collections::HashSet;

use oci_spec::image::{ANNOTATION_REF_NAME, Descriptor, ImageIndex};

use super::media::{self, Kind};
use super::platform::Fit;
use super::source::Source;
use super::{ImageError, LayoutRef, Platform, Selector};
use crate::digest::Digest;

/// How many image indexes deep (below `index.json`) we follow. Real images nest one deep;
/// content addressing rules out cycles, but not absurd depth.
const MAX_NESTING: usize = 4;

/// The descriptor of the one image manifest `reference` names for `platform`, in the layout
/// `source` whose `index.json` is `index`.
pub(super) fn manifest_descriptor(
    source: &Source,
    index: &ImageIndex,
    reference: &LayoutRef,
    platform: &Platform,
) -> Result<Descriptor, ImageError> {
    let entries: Vec<&Descriptor> = index.manifests().iter().collect();
    let within = reference.to_string();
    let chosen = match &reference.selector {
        Selector::Tag(tag) => {
            let tagged: Vec<&Descriptor> = entries
                .iter()
                .copied()
                .filter(|entry| ref_name(entry) == Some(tag))
                .collect();
            if tagged.is_empty() {
                return Err(ImageError::TagNotFound {
                    tag: tag.clone(),
                    layout: reference.layout.clone(),
                    available: names(&entries),
                });
            }
            one_of(tagged, platform, &within)?.clone()
        }
        Selector::Digest(digest) => {
            let mut searched = HashSet::new();
            find_by_digest(source, &entries, digest, 0, &mut searched)?.ok_or_else(|| {
                ImageError::DigestNotFound {
                    digest: digest.clone(),
                    layout: reference.layout.clone(),
                }
            })?
        }
        Selector::Default => {
            // Attestations stored beside an image are not another image to choose from.
            let images: Vec<&Descriptor> = entries
                .into_iter()
                .filter(|entry| !is_attestation(entry))
                .collect();
            let distinct = distinct(&images);
            if distinct.is_empty() {
                return Err(ImageError::Invalid(format!(
                    "{within} is empty: its index.json lists no images"
                )));
            }
            // Several entries are one image only if they are its platform variants: one name
            // (or none) and a platform on each.
            let names_of_distinct: HashSet<Option<&str>> =
                distinct.iter().map(|entry| ref_name(entry)).collect();
            let variants = names_of_distinct.len() == 1
                && distinct.iter().all(|entry| entry.platform().is_some());
            if distinct.len() > 1 && !variants {
                return Err(ImageError::Ambiguous {
                    layout: reference.layout.clone(),
                    available: names(&images),
                });
            }
            one_of(distinct, platform, &within)?.clone()
        }
    };
    follow_indexes(source, chosen, platform, &within)
}

/// Descends through image indexes to the manifest for `platform`.
pub(super) fn follow_indexes(
    source: &Source,
    mut descriptor: Descriptor,
    platform: &Platform,
    within: &str,
) -> Result<Descriptor, ImageError> {
    let mut nesting = 0;
    loop {
        let media_type = descriptor.media_type().as_ref();
        match media::kind(media_type) {
            Some(Kind::Manifest) => return Ok(descriptor),
            Some(Kind::Index) if nesting == MAX_NESTING => {
                return Err(ImageError::Invalid(format!(
                    "{within}: image indexes nest more than {MAX_NESTING} deep"
                )));
            }
            Some(Kind::Index) => {
                let (digest, index) = source.index(&descriptor)?;
                let entries: Vec<&Descriptor> = index.manifests().iter().collect();
                descriptor =
                    by_platform(entries, platform, &format!("index {digest} of {within}"))?.clone();
                nesting += 1;
            }
            None => {
                return Err(ImageError::UnsupportedMediaType {
                    what: format!("manifest {}", descriptor.digest()),
                    media_type: media_type.to_owned(),
                });
            }
        }
    }
}

/// Entries sharing a name are the same image or its platform variants.
fn one_of<'a>(
    candidates: Vec<&'a Descriptor>,
    platform: &Platform,
    within: &str,
) -> Result<&'a Descriptor, ImageError> {
    match distinct(&candidates)[..] {
        [only] => Ok(only),
        ref several => by_platform(several.to_vec(), platform, within),
    }
}

/// The entry that best fits `platform`, the first of equally good ones; attestations (which
/// BuildKit lists as `unknown/unknown`) are never candidates.
fn by_platform<'a>(
    entries: Vec<&'a Descriptor>,
    platform: &Platform,
    within: &str,
) -> Result<&'a Descriptor, ImageError> {
    let mut best: Option<(Fit, &Descriptor)> = None;
    let mut available = Vec::new();
    for entry in entries.into_iter().filter(|entry| !is_attestation(entry)) {
        let Some(offered) = Platform::of_descriptor(entry) else {
            available.push(format!("{} without a platform", entry.digest()));
            continue;
        };
        if let Some(fit) = platform.fit(&offered)
            && best.is_none_or(|(best_fit, _)| fit > best_fit)
        {
            best = Some((fit, entry));
        }
        available.push(offered.to_string());
    }
    best.map(|(_, entry)| entry)
        .ok_or_else(|| ImageError::NoMatchingPlatform {
            platform: platform.clone(),
            within: within.to_owned(),
            available,
        })
}

/// Finds the descriptor of `digest` in `entries` or in the indexes they list, which lets a
/// platform's manifest be named by digest although only its multi-platform index is tagged.
/// `searched` holds the indexes already looked through, so each is read once.
fn find_by_digest(
    source: &Source,
    entries: &[&Descriptor],
    digest: &Digest,
    nesting: usize,
    searched: &mut HashSet<String>,
) -> Result<Option<Descriptor>, ImageError> {
    if let Some(found) = entries
        .iter()
        .find(|entry| entry.digest().as_ref() == digest.as_str())
    {
        return Ok(Some((*found).clone()));
    }
    if nesting == MAX_NESTING {
        return Ok(None);
    }
    for entry in entries {
        let is_index = media::kind(entry.media_type().as_ref()) == Some(Kind::Index);
        if !is_index || !searched.insert(entry.digest().to_string()) {
            continue;
        }
        let (_, index) = source.index(entry)?;
        let children: Vec<&Descriptor> = index.manifests().iter().collect();
        if let Some(found) = find_by_digest(source, &children, digest, nesting + 1, searched)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn is_attestation(entry: &Descriptor) -> bool {
    let unknown_platform = entry.platform().as_ref().is_some_and(|platform| {
        platform.os().to_string() == "unknown" && platform.architecture().to_string() == "unknown"
    });
    let annotated = entry
        .annotations()
        .as_ref()
        .and_then(|annotations| annotations.get("vnd.docker.reference.type"))
        .is_some_and(|kind| kind == "attestation-manifest");
    unknown_platform || annotated
}

fn ref_name(entry: &Descriptor) -> Option<&str> {
    entry
        .annotations()
        .as_ref()?
        .get(ANNOTATION_REF_NAME)
        .map(String::as_str)
}

/// The entries without repeats of a digest (the same manifest may carry several tags).
fn distinct<'a>(entries: &[&'a Descriptor]) -> Vec<&'a Descriptor> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .copied()
        .filter(|entry| seen.insert(entry.digest().as_ref()))
        .collect()
}

/// How each entry can be named on the command line: its tag, or else its digest.
fn names(entries: &[&Descriptor]) -> Vec<String> {
    let mut names: Vec<String> = entries
        .iter()
        .map(|entry| ref_name(entry).map_or_else(|| format!("@{}", entry.digest()), str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}
