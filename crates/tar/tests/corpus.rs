//! strata-tar against Go's `archive/tar`: every archive must read the same, entry by entry
//! and field by field, and fail where Go fails. The archives come from other projects' test
//! data (Go's own, Python's), from GNU tar and bsdtar in each of their formats, and from a
//! generated corpus covering each class of header where readers disagree.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{corpus, oracle, view};

/// Compares strata-tar's view of each archive with Go's; returns the archives that differ.
fn differences(named: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut oracle = oracle::Oracle::start();
    named
        .iter()
        .filter_map(|(name, bytes)| {
            let ours = view::comparable(view::view(bytes));
            let go = view::comparable(oracle.view(bytes));
            (ours != go).then(|| format!("{name}:\n  strata-tar {ours}\n  Go         {go}"))
        })
        .collect()
}

fn assert_same(named: &[(String, Vec<u8>)]) {
    let found = differences(named);
    assert!(
        found.is_empty(),
        "{} of {} differ:\n{}",
        found.len(),
        named.len(),
        found.join("\n")
    );
}

#[test]
fn the_generated_corpus_reads_as_go_reads_it() {
    let corpus = corpus::generated();
    assert!(corpus.len() > 70, "{} archives", corpus.len());
    assert_same(&corpus);
}

#[test]
fn gnu_tar_and_bsdtar_archives_read_as_go_reads_them() {
    let scratch = scratch_dir();
    let named = corpus::written_by_tools(&scratch);
    let sparse_ones = named.iter().filter(|(_, bytes)| {
        let view = view::view(bytes);
        view["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| !entry["holes"].is_null())
    });
    assert!(
        sparse_ones.count() >= 4,
        "GNU tar and bsdtar should have written sparse files"
    );
    assert_same(&named);
    fs::remove_dir_all(&scratch).unwrap();
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-tar-corpus-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn other_projects_test_archives_read_as_go_reads_them() {
    let paths = corpus::test_data();
    let named: Vec<_> = paths
        .iter()
        .map(|path| (path.display().to_string(), fs::read(path).unwrap()))
        .collect();
    assert_same(&named);
    // The same through the oracle reading files (and so a reader that is not a byte slice).
    let go = oracle::views_of_files(&paths);
    for ((name, bytes), go) in named.iter().zip(go) {
        assert_eq!(
            view::comparable(view::view(bytes)),
            view::comparable(go),
            "{name}"
        );
    }
}

/// Not a check: writes the fuzzer's seeds (the generated corpus, and the test archives of
/// other projects, each under 64 KiB) to `fuzz/corpus/differential`. See `fuzz/README.md`.
#[test]
#[ignore]
fn seed_the_fuzzer() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/differential");
    fs::create_dir_all(&dir).unwrap();
    let others = corpus::test_data()
        .into_iter()
        .map(|path| (path.display().to_string(), fs::read(path).unwrap()));
    for (name, bytes) in corpus::generated().into_iter().chain(others) {
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        if bytes.len() <= 64 << 10 {
            fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}
