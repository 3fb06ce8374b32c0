//! The id maps the tests exercise, and reading image owners back through them.

use std::fs;

use super::run::{IdMap, test_ids};
use super::tree::Node;

/// The test user's subordinate uid range `(start, count)`, from `/etc/subuid`.
pub fn subordinate_range() -> Option<(u32, u32)> {
    let (uid, _) = test_ids();
    let name = nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name);
    let subuid = fs::read_to_string("/etc/subuid").ok()?;
    subuid.lines().find_map(|line| {
        let mut fields = line.split(':');
        let owner = fields.next()?;
        if owner != uid.to_string() && Some(owner) != name.as_deref() {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

/// The id maps this machine lets the tests exercise: always single; auto (which must then pick
/// the subordinate range) where the test user has one. CI gives it one.
pub fn modes() -> Vec<IdMap> {
    if required_subordinate_range().is_some() {
        vec![IdMap::Single, IdMap::Auto]
    } else {
        eprintln!("note: the test user has no subordinate range; testing the single map only");
        vec![IdMap::Single]
    }
}

/// The test user's subordinate range, for tests that need one: outside CI a machine without
/// one skips them (`None`); in CI, which gives the user a range, its absence fails the test.
pub fn required_subordinate_range() -> Option<(u32, u32)> {
    let range = subordinate_range();
    assert!(
        range.is_some() || std::env::var_os("CI").is_none(),
        "CI must give the test user a subordinate range"
    );
    range
}

/// Which image owner a node stands for: its on-disk owner taken back through the mapping,
/// overridden by the `user.rootlesscontainers` record where there is one.
pub fn image_owner(node: &Node, idmap: IdMap) -> (u32, u32) {
    let (uid, gid) = test_ids();
    let to_container = |host: u32, user: u32| -> u32 {
        if host == user {
            return 0;
        }
        match (idmap, subordinate_range()) {
            (IdMap::Auto, Some((start, count))) if (start..start + count).contains(&host) => {
                host - start + 1
            }
            _ => panic!("host id {host} is neither the user nor in the subordinate range"),
        }
    };
    let on_disk = (to_container(node.uid, uid), to_container(node.gid, gid));
    match node.rootless() {
        Some((ruid, rgid)) => (ruid.unwrap_or(on_disk.0), rgid.unwrap_or(on_disk.1)),
        None => on_disk,
    }
}
