//! What a layer could not reproduce, kept in entry order and bounded: the first
//! [`KEPT`] entries' account, and a count of the rest. A layer of 60,000 device nodes
//! costs a report of a thousand lines, not of sixty thousand. Pure bookkeeping.

use strata_protocol::Skipped;

/// How many skipped paths a layer's report lists.
pub const KEPT: usize = 1000;

/// Skipped paths by entry number, from the applier and the writer threads alike (which may
/// report out of order).
#[derive(Default)]
pub struct SkippedList {
    /// Unsorted, at most `2 * KEPT` long.
    skipped: Vec<(u64, Skipped)>,
    omitted: u64,
}

impl SkippedList {
    pub fn push(&mut self, entry: u64, skipped: Skipped) {
        self.skipped.push((entry, skipped));
        if self.skipped.len() >= 2 * KEPT {
            self.keep_first();
        }
    }

    pub fn append(&mut self, other: SkippedList) {
        self.omitted += other.omitted;
        for (entry, skipped) in other.skipped {
            self.push(entry, skipped);
        }
    }

    /// The first [`KEPT`] in entry order (an entry's own in the order found), and how many
    /// more there were.
    pub fn finish(mut self) -> (Vec<Skipped>, u64) {
        self.keep_first();
        let kept = self.skipped.into_iter().map(|(_, skipped)| skipped);
        (kept.collect(), self.omitted)
    }

    fn keep_first(&mut self) {
        self.skipped.sort_by_key(|(entry, _)| *entry);
        if self.skipped.len() > KEPT {
            self.omitted += (self.skipped.len() - KEPT) as u64;
            self.skipped.truncate(KEPT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(path: &str) -> Skipped {
        Skipped {
            path: path.into(),
            reason: "device node".into(),
        }
    }

    fn paths(list: SkippedList) -> (Vec<String>, u64) {
        let (kept, omitted) = list.finish();
        (
            kept.into_iter().map(|skipped| skipped.path).collect(),
            omitted,
        )
    }

    #[test]
    fn keeps_entry_order_whoever_reports() {
        let mut list = SkippedList::default();
        list.push(3, skip("c"));
        list.push(1, skip("a1"));
        let mut writers = SkippedList::default();
        writers.push(2, skip("b"));
        list.append(writers);
        list.push(1, skip("a2"));
        assert_eq!(
            paths(list),
            (vec!["a1".into(), "a2".into(), "b".into(), "c".into()], 0)
        );
    }

    #[test]
    fn keeps_the_first_thousand_and_counts_the_rest() {
        let mut list = SkippedList::default();
        for entry in (0..60_000u64).rev() {
            list.push(entry, skip(&entry.to_string()));
            assert!(list.skipped.len() < 2 * KEPT);
        }
        let (kept, omitted) = paths(list);
        assert_eq!(kept.len(), KEPT);
        assert_eq!((kept[0].as_str(), kept[999].as_str()), ("0", "999"));
        assert_eq!(omitted, 59_000);
    }
}
