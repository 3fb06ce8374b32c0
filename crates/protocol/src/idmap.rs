//! Which ids the helper's user namespace maps: the user alone, or the user as container root
//! plus subordinate ranges.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A run of host ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    /// The first id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// How the helper's namespace maps ids; container 0 is always the calling user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdMap {
    /// Container 0 → the user; nobody else exists.
    Single,
    /// Container 0 → the user, 1..=N → the subordinate ranges.
    Subordinate {
        /// The user's subordinate uids.
        uids: IdRange,
        /// The user's subordinate gids.
        gids: IdRange,
    },
}

impl IdMap {
    /// How many container ids, from 0, this map can give a file.
    pub fn mapped_ids(&self) -> u64 {
        match self {
            IdMap::Single => 1,
            IdMap::Subordinate { uids, gids } => 1 + u64::from(uids.count.min(gids.count)),
        }
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdMap::Single => f.write_str("single"),
            IdMap::Subordinate { uids, gids } => write!(
                f,
                "subordinate uids {}-{}, gids {}-{}",
                uids.start,
                u64::from(uids.start) + u64::from(uids.count) - 1,
                gids.start,
                u64::from(gids.start) + u64::from(gids.count) - 1
            ),
        }
    }
}
