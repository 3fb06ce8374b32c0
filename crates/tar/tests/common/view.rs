//! strata-tar's view of an archive, in the form `tests/oracle/main.go` prints Go's.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::io::Read;
use strata_tar::{Archive, Kind, Region};

/// Every entry with its data's digest, and the error reading stopped at (empty if none).
pub fn view(archive: &[u8]) -> Value {
    let mut archive = Archive::new(archive);
    let mut entries = Vec::new();
    let error = loop {
        let header = match archive.next_header() {
            Ok(Some(header)) => header,
            Ok(None) => break String::new(),
            Err(err) => break err.to_string(),
        };
        let pax = header.pax.as_ref().map(|records| {
            records
                .iter()
                .map(|(key, value)| json!([hex::encode(key), hex::encode(value)]))
                .collect::<Vec<_>>()
        });
        let mut entry = Map::new();
        entry.insert("kind".into(), json!(header.kind.as_byte()));
        entry.insert("pax".into(), json!(pax));
        if header.kind == Kind::GlobalPax {
            // As the oracle prints it: Go fills nothing else reliably.
            for (key, value) in [("size", json!(0)), ("mode", json!(0)), ("uid", json!(0))] {
                entry.insert(key.into(), value);
            }
            entry.insert("gid".into(), json!(0));
            entry.insert("mtime".into(), json!([0, 0]));
            entry.insert("holes".into(), Value::Null);
            entry.insert("data".into(), json!(""));
            entries.push(Value::Object(entry));
            continue;
        }
        if !header.name.is_empty() {
            entry.insert("name".into(), json!(hex::encode(&header.name)));
        }
        if !header.link_name.is_empty() {
            entry.insert("link".into(), json!(hex::encode(&header.link_name)));
        }
        entry.insert("size".into(), json!(header.size));
        entry.insert("mode".into(), json!(header.mode));
        entry.insert("uid".into(), json!(header.uid));
        entry.insert("gid".into(), json!(header.gid));
        entry.insert(
            "mtime".into(),
            json!([header.mtime.seconds, header.mtime.nanos]),
        );
        let holes = header
            .sparse
            .as_ref()
            .map(|regions| holes(regions, header.size));
        entry.insert("holes".into(), json!(holes));
        let digest = digest(archive.data());
        entry.insert("data".into(), json!(digest.as_deref().unwrap_or("")));
        entries.push(Value::Object(entry));
        if let Err(err) = digest {
            break err.to_string();
        }
    };
    json!({"entries": entries, "error": error})
}

/// What `view` and the oracle must agree on: everything but the error's wording.
pub fn comparable(mut view: Value) -> Value {
    let failed = view["error"]
        .as_str()
        .is_some_and(|error| !error.is_empty());
    view["error"] = json!(failed);
    view
}

/// The stretches of a file of `size` bytes that no region covers.
fn holes(regions: &[Region], size: i64) -> Vec<[u64; 2]> {
    let mut holes = Vec::new();
    let mut at = 0;
    for region in regions.iter().chain([&Region {
        offset: size as u64,
        length: 0,
    }]) {
        if region.offset > at {
            holes.push([at, region.offset - at]);
        }
        at = region.offset + region.length;
    }
    holes
}

fn digest(mut data: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match data.read(&mut buf)? {
            0 => return Ok(hex::encode(hasher.finalize())),
            n => hasher.update(&buf[..n]),
        }
    }
}
