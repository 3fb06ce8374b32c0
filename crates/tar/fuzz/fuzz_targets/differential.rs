//! Differential fuzzing against Go's `archive/tar`: every input must read the same with
//! strata-tar as with Go, entry by entry and field by field, and fail where Go fails. See
//! `crates/tar/fuzz/README.md`.

#![no_main]

#[path = "../../tests/common/oracle.rs"]
#[allow(dead_code)] // Files are for the tests.
mod oracle;
#[path = "../../tests/common/view.rs"]
mod view;

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;

static ORACLE: Mutex<Option<oracle::Oracle>> = Mutex::new(None);

fuzz_target!(|archive: &[u8]| {
    let ours = view::comparable(view::view(archive));
    let mut oracle = ORACLE.lock().unwrap();
    let go = view::comparable(oracle.get_or_insert_with(oracle::Oracle::start).view(archive));
    assert_eq!(ours, go, "strata-tar and Go read this archive differently");
});
