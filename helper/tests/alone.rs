//! `strata-helper` run by anything but `strata`: it refuses, in one line, and touches nothing.
//! (Its work is tested through `strata`, in the workspace's `tests/`; this test also makes
//! `cargo test` build the helper beside `strata` for them.)

use std::process::Command;

#[test]
fn run_without_its_pipes_it_refuses_in_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_strata-helper"))
        .arg("{}")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("this program is run by strata"), "{stderr}");
    assert!(out.stdout.is_empty());
}
