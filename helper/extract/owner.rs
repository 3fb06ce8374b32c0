//! Image ownership the kernel cannot give a file, recorded in `user.rootlesscontainers` the way
//! umoci does: protobuf `Resource { uint32 uid = 1; uint32 gid = 2; }`, `0xFFFFFFFF` for a field
//! that needs no change, and no xattr when neither does.

pub const XATTR: &str = "user.rootlesscontainers";
const NOOP_ID: u32 = u32::MAX;

/// How one image owner lands on disk.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    /// Ids to `lchown` to, inside the helper's namespace (None: keep what creation gave).
    pub chown: Option<(u32, u32)>,
    /// The `user.rootlesscontainers` value for ids that could not be set.
    pub record: Option<Vec<u8>>,
}

/// `mapped` is how many ids the helper's namespace maps from 0 (1 under the single map): ids
/// below it are set for real, others stay 0 (the user) and are recorded.
pub fn place(uid: u64, gid: u64, mapped: u64) -> Placement {
    let settable = |id: u64| id < mapped;
    let kept = |id: u64| if settable(id) { id as u32 } else { 0 };
    let recorded = |id: u64| {
        if id == 0 || settable(id) {
            NOOP_ID
        } else {
            u32::try_from(id).unwrap_or(NOOP_ID)
        }
    };
    let target = (kept(uid), kept(gid));
    let (ruid, rgid) = (recorded(uid), recorded(gid));
    Placement {
        chown: (target != (0, 0)).then_some(target),
        record: (ruid != NOOP_ID || rgid != NOOP_ID).then(|| encode(ruid, rgid)),
    }
}

/// Proto3 encoding: field 1 and 2 as varints, a literal 0 omitted.
fn encode(uid: u32, gid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    for (tag, value) in [(0x08u8, uid), (0x10u8, gid)] {
        if value == 0 {
            continue;
        }
        out.push(tag);
        let mut v = value;
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_owned_needs_nothing() {
        assert_eq!(
            place(0, 0, 1),
            Placement {
                chown: None,
                record: None
            }
        );
    }

    #[test]
    fn matches_umoci_wire_bytes() {
        // Values from umoci's rootlesscontainers tests.
        assert_eq!(
            place(1000, 0, 1).record.unwrap(),
            [0x08, 0xe8, 0x07, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]
        );
        assert_eq!(place(33, 33, 1).record.unwrap(), [0x08, 0x21, 0x10, 0x21]);
    }

    #[test]
    fn single_map_records_everything_but_root() {
        let placed = place(0, 42, 1);
        assert_eq!(placed.chown, None);
        assert_eq!(
            placed.record.unwrap(),
            [0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x10, 42]
        );
    }

    #[test]
    fn a_range_sets_what_it_maps_and_records_the_rest() {
        assert_eq!(
            place(33, 33, 65537),
            Placement {
                chown: Some((33, 33)),
                record: None
            }
        );
        let placed = place(172_761_424, 5, 65537);
        assert_eq!(placed.chown, Some((0, 5)));
        assert_eq!(placed.record.unwrap(), encode(172_761_424, NOOP_ID));
    }
}
