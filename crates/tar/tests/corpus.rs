//! strata-tar against Go's `archive/tar`: every archive must read the same, entry by entry
//! and field by field, and fail where Go fails. The archives come from other projects' test
//! data (Go's own, Python's), from GNU tar and bsdtar in each of their formats, and from a
//! generated corpus covering each class of header where readers disagree.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Go's and Python's own test archives.
fn test_data() -> Vec<PathBuf> {
    let goroot = Command::new("go")
        .args(["env", "GOROOT"])
        .output()
        .expect("running go");
    let goroot = String::from_utf8(goroot.stdout).unwrap();
    let go = Path::new(goroot.trim()).join("src/archive/tar/testdata");
    let mut paths: Vec<PathBuf> = fs::read_dir(&go)
        .unwrap_or_else(|err| panic!("{}: {err}", go.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tar"))
        .collect();
    assert!(paths.len() > 30, "Go's test archives: {paths:?}");
    let python = Command::new("python3")
        .args([
            "-c",
            "import test, os; print(os.path.dirname(test.__file__))",
        ])
        .output();
    if let Ok(output) = python {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        for name in [
            "testtar.tar",
            "archivetestdata/testtar.tar",
            "recursion.tar",
            "archivetestdata/recursion.tar",
        ] {
            if dir.join(name).is_file() {
                paths.push(dir.join(name));
            }
        }
    }
    paths.sort();
    paths
}

#[test]
fn other_projects_test_archives_read_as_go_reads_them() {
    let paths = test_data();
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

/// A tree with what writers encode differently: long names and link targets, a sparse
/// file, links, a FIFO, owners and modes.
fn sample_tree(root: &Path, long_names: bool) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("dir/file"), "contents\n").unwrap();
    fs::hard_link(root.join("dir/file"), root.join("dir/hardlink")).unwrap();
    symlink("file", root.join("dir/symlink")).unwrap();
    nix::unistd::mkfifo(
        &root.join("dir/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .ok();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(&[b'm'; 10000], 20 << 20).unwrap();
    sparse.write_all_at(b"end", (64 << 20) - 3).unwrap();
    if long_names {
        let long = root.join("l".repeat(120)).join("n".repeat(150));
        fs::create_dir_all(long.parent().unwrap()).unwrap();
        fs::write(&long, "long\n").unwrap();
        symlink("t".repeat(200), root.join("long-target")).unwrap();
    }
}

#[test]
fn gnu_tar_and_bsdtar_archives_read_as_go_reads_them() {
    let tmp = tempfile_dir();
    let (short, long) = (tmp.join("short"), tmp.join("long"));
    sample_tree(&short, false);
    sample_tree(&long, true);
    let mut named = Vec::new();
    let mut make = |name: String, tool: &str, args: &[&str], tree: &Path| {
        let output = Command::new(tool)
            .args(args)
            .args(["-cf", "-", "-C"])
            .arg(tree)
            .arg(".")
            .output();
        let output = output.unwrap_or_else(|err| panic!("{tool}: {err}"));
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        named.push((name, output.stdout));
    };
    // (v7 has no FIFOs.)
    let v7 = ["--format", "v7", "--exclude", "./dir/fifo"];
    make("GNU tar --format=v7".into(), "tar", &v7, &short);
    make(
        "GNU tar --format=ustar".into(),
        "tar",
        &["--format", "ustar"],
        &short,
    );
    for format in ["oldgnu", "gnu", "posix"] {
        make(
            format!("GNU tar --format={format}"),
            "tar",
            &["--format", format],
            &long,
        );
    }
    make(
        "GNU tar --format=gnu --sparse".into(),
        "tar",
        &["--format=gnu", "--sparse"],
        &long,
    );
    for version in ["0.0", "0.1", "1.0"] {
        let args = ["--format=posix", "--sparse", "--sparse-version", version];
        make(
            format!("GNU tar --sparse-version={version}"),
            "tar",
            &args,
            &long,
        );
    }
    make("bsdtar --format=v7".into(), "bsdtar", &v7, &short);
    make(
        "bsdtar --format=ustar".into(),
        "bsdtar",
        &["--format", "ustar"],
        &short,
    );
    for format in ["pax", "gnutar"] {
        make(
            format!("bsdtar --format={format}"),
            "bsdtar",
            &["--format", format],
            &long,
        );
    }
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
    fs::remove_dir_all(&tmp).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-tar-corpus-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}
