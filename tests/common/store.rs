//! Looking into a store and beside a DEST from the outside, as the store and error tests do.

use std::fs;
use std::path::{Path, PathBuf};

use super::run::TestEnv;

pub fn hex(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{digest} is not a sha256 digest"))
}

pub fn snapshot_dir(env: &TestEnv, chain_id: &str) -> PathBuf {
    env.store().join("snapshots").join(hex(chain_id))
}

/// Names in `dir`, sorted; none when `dir` does not exist.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    names.sort();
    names
}

/// Committed snapshots (chain ID hex) in the store at `store`.
pub fn snapshots_in(store: &Path) -> Vec<String> {
    names_in(&store.join("snapshots"))
}

/// Committed snapshots (chain ID hex) in the env's store.
pub fn snapshots(env: &TestEnv) -> Vec<String> {
    snapshots_in(&env.store())
}

/// `.DEST.strata-*` staging directories beside `dest`.
pub fn staging_dirs(dest: &Path) -> Vec<String> {
    let prefix = format!(".{}.strata-", dest.file_name().unwrap().to_string_lossy());
    names_in(dest.parent().unwrap())
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .collect()
}
