//! When the applier hands a file to the writer threads, and when it must wait for them first:
//! pure rules, over facts about an entry's canonical path (see [`super::resolve`]).
//!
//! The one invariant: a file out with the writers is a name this layer wrote, and so are its
//! directories. An entry that names neither touches nothing a writer holds, and goes on beside
//! them; one that names such a path, or reads another name (a hardlink), waits. Resolving an
//! entry's parent waits too if it must look at a name that is out.

/// Where the layer is written, as far as the writers are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A directory of its own (DEST, a native snapshot, a parentless overlay snapshot).
    Plain,
    /// An overlay mount, whose upper directory the writers may fill behind overlayfs's back
    /// (new names in directories the layer made, see `Applier::parent_dir`): what it looks up
    /// must not meet them.
    Overlay,
}

/// What the applier knows of an entry once its parent is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub kind: Kind,
    /// The parent is a directory this layer made: nothing of lower layers is in it.
    pub parent_made: bool,
    /// This layer already wrote the entry's path, or something below it.
    pub written: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file the writers may take: small, not sparse, and there are writers.
    SmallFile,
    /// A hardlink: it reads its target.
    Link,
    /// Anything else: directories, symlinks, FIFOs, other files.
    Other,
}

/// What to do with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Wait until every file out is written, then apply the entry here.
    WaitThenHere,
    /// Apply it here, beside the writers.
    Here,
    /// Hand it to the writers: a new name, in a directory where nothing lower can be.
    HandOut,
    /// Hand it to the writers if a lower layer has nothing there or a regular file (which the
    /// writer removes first; it has no names below it and leads nowhere); replace anything
    /// else here.
    HandOutOverLower,
}

pub fn plan(target: Target, facts: Facts) -> Plan {
    let Facts {
        kind,
        parent_made,
        written,
    } = facts;
    if kind == Kind::Link || written {
        return Plan::WaitThenHere;
    }
    match (target, kind, parent_made) {
        (_, Kind::SmallFile, true) => Plan::HandOut,
        (Target::Plain, Kind::SmallFile, false) => Plan::HandOutOverLower,
        (Target::Plain, _, _) | (Target::Overlay, _, true) => Plan::Here,
        // Through the overlay, a lower layer's name: replaced through overlayfs, whose lookups
        // must not meet files written behind its back.
        (Target::Overlay, _, false) => Plan::WaitThenHere,
    }
}

/// Whether a whiteout or opaque marker waits for the writers. On a plain tree it removes only
/// names this layer did not write, so no file that is out; through an overlay, its lookups
/// must not meet files written behind overlayfs's back.
pub fn removal_waits(target: Target) -> bool {
    target == Target::Overlay
}

#[cfg(test)]
mod tests {
    use super::Kind::*;
    use super::Plan::*;
    use super::Target::*;
    use super::*;

    #[test]
    fn plans() {
        // (target, kind, parent made, written) → plan
        let table = [
            // A hardlink reads another name, which may be out.
            (Plain, Link, true, false, WaitThenHere),
            (Overlay, Link, false, false, WaitThenHere),
            // A path the layer wrote may be out, or hold a file that is.
            (Plain, SmallFile, true, true, WaitThenHere),
            (Plain, Other, false, true, WaitThenHere),
            (Overlay, SmallFile, true, true, WaitThenHere),
            // New names in a directory of the layer: out, or made beside the writers.
            (Plain, SmallFile, true, false, HandOut),
            (Overlay, SmallFile, true, false, HandOut),
            (Plain, Other, true, false, Here),
            (Overlay, Other, true, false, Here),
            // Over a lower layer's name.
            (Plain, SmallFile, false, false, HandOutOverLower),
            (Plain, Other, false, false, Here),
            (Overlay, SmallFile, false, false, WaitThenHere),
            (Overlay, Other, false, false, WaitThenHere),
        ];
        for (target, kind, parent_made, written, want) in table {
            let facts = Facts {
                kind,
                parent_made,
                written,
            };
            assert_eq!(plan(target, facts), want, "{target:?} {facts:?}");
        }
    }

    #[test]
    fn only_removals_through_an_overlay_wait() {
        assert!(!removal_waits(Plain));
        assert!(removal_waits(Overlay));
    }
}
