//! Which ids the helper's user namespace maps: the user alone, or the user as
//! container root plus a subordinate range from `/etc/subuid` and `/etc/subgid`.

use std::path::Path;

pub use strata_protocol::{IdMap, IdRange};

/// What the user asked for with `--idmap`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdMapMode {
    /// The subordinate ranges when they work, else the single map (with a warning).
    #[default]
    Auto,
    /// The user alone.
    Single,
}

/// The user's subordinate ranges, if `/etc/subuid` and `/etc/subgid` give both and the tools
/// that install them are on `PATH`; otherwise why not, in words for a warning.
pub fn subordinate() -> Result<IdMap, String> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|user| user.name);
    let range = |file: &str, id: u32| -> Result<IdRange, String> {
        let content =
            std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
        find_range(&content, user.as_deref(), id).ok_or_else(|| {
            let who = user.clone().unwrap_or_else(|| format!("uid {id}"));
            format!("{file} gives {who} no range")
        })
    };
    let map = IdMap::Subordinate {
        uids: range("/etc/subuid", uid.as_raw())?,
        gids: range("/etc/subgid", gid.as_raw())?,
    };
    for tool in ["newuidmap", "newgidmap"] {
        if find_program(tool).is_none() {
            return Err(format!(
                "{tool} is not installed (Debian and Ubuntu: the uidmap package)"
            ));
        }
    }
    Ok(map)
}

/// `program` as `PATH` finds it.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The first range `/etc/subuid`-style `content` gives the user, named either way
/// (`name:start:count` or `uid:start:count`), as shadow's newuidmap accepts them.
pub fn find_range(content: &str, user: Option<&str>, id: u32) -> Option<IdRange> {
    let id = id.to_string();
    content.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
        if owner != id && Some(owner) != user {
            return None;
        }
        let range = IdRange {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (range.count > 0).then_some(range)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBUID: &str = "alice:100000:65536\n# comment\n1001:300000:1000\nbad line\nzero:5:0\n";

    #[test]
    fn finds_ranges_by_name_or_uid() {
        let alice = IdRange {
            start: 100_000,
            count: 65_536,
        };
        assert_eq!(find_range(SUBUID, Some("alice"), 1000), Some(alice));
        let by_uid = IdRange {
            start: 300_000,
            count: 1000,
        };
        assert_eq!(find_range(SUBUID, None, 1001), Some(by_uid));
        assert_eq!(find_range(SUBUID, Some("bob"), 1002), None);
        assert_eq!(find_range(SUBUID, Some("zero"), 7), None);
    }

    #[test]
    fn counts_mapped_ids() {
        assert_eq!(IdMap::Single.mapped_ids(), 1);
        let map = IdMap::Subordinate {
            uids: IdRange {
                start: 100_000,
                count: 65_536,
            },
            gids: IdRange {
                start: 100_000,
                count: 1000,
            },
        };
        assert_eq!(map.mapped_ids(), 1001);
        assert_eq!(
            map.to_string(),
            "subordinate uids 100000-165535, gids 100000-100999"
        );
    }
}
