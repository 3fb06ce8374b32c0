//! Which layers an unpack must extract: pure, given a way to ask the store what is committed.

use crate::digest::{Digest, chain_ids};

/// What an unpack finds in the store, and so must extract.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Chain ID of each layer's snapshot, bottom first.
    pub chain_ids: Vec<Digest>,
    /// Layers before this index are committed (as part of the highest committed chain) and
    /// need no work; this one and all above are extracted.
    pub first_missing: usize,
}

/// Looks for the highest committed chain ID from the top down, so a fully cached image costs
/// one lookup, and a committed chain covers all the layers below it.
pub fn plan(diff_ids: &[Digest], is_committed: impl Fn(&Digest) -> bool) -> Plan {
    let chain_ids = chain_ids(diff_ids);
    let first_missing = chain_ids
        .iter()
        .rposition(is_committed)
        .map_or(0, |top| top + 1);
    Plan {
        chain_ids,
        first_missing,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn diff_ids(n: u8) -> Vec<Digest> {
        (0..n).map(|i| Digest::of_bytes(&[i])).collect()
    }

    #[test]
    fn all_cached_costs_one_lookup() {
        let asked = RefCell::new(0);
        let plan = plan(&diff_ids(3), |_| {
            *asked.borrow_mut() += 1;
            true
        });
        assert_eq!(plan.first_missing, 3);
        assert_eq!(*asked.borrow(), 1);
    }

    #[test]
    fn shared_lower_layers_are_reused() {
        let ids = diff_ids(3);
        let chain = chain_ids(&ids);
        let plan = plan(&ids, |c| *c == chain[0] || *c == chain[1]);
        assert_eq!(plan.first_missing, 2);
        assert_eq!(plan.chain_ids, chain);
    }

    #[test]
    fn nothing_cached_extracts_everything() {
        assert_eq!(plan(&diff_ids(2), |_| false).first_missing, 0);
        assert_eq!(plan(&[], |_| true).first_missing, 0);
    }
}
