//! Property: the tree an image produces is a function of the image alone. Content, type, mode,
//! owner, xattrs, times, hardlink groups and the `skipped` lists are the same whether the image
//! is unpacked with a cold store, a warm one, `--no-store` or `--jobs 2`/`--jobs 4` (each into a
//! store of its own), and on every run; a layer that fails fails in every mode and leaves no
//! DEST.
//!
//! Images are generated from a seed by a small PRNG: 2 to 5 layers of files (some over the
//! 128 KiB the writer threads take), directories (named again by later layers with new modes
//! and `user.*` xattrs), symlinks (many of them aliases of directories: `s -> d`, `s -> ../d`,
//! `s -> /d`), hardlinks within and across layers, whiteouts and opaque markers, written through
//! those aliases too, over a small alphabet of names so that layers collide often.
//!
//! - `STRATA_PROPERTY_CASES`: how many images (default [`DEFAULT_CASES`]).
//! - `STRATA_PROPERTY_SEED`: the seed (default [`DEFAULT_SEED`]; decimal or `0x` hex).
//! - `STRATA_PROPERTY_CASE`: run that case number alone (as a failure names it).
//! - `STRATA_PROPERTY_IMAGE`: a file holding a listing as a failure prints it (`layer 1/2:`,
//!   then one entry a line, `file  d/x  (12 B #3f2a)  mode=640 …`): run that image alone.
//! - `STRATA_PROPERTY_SHRINK`: on a failure, remove layers, entries and attributes for as long
//!   as the same difference remains, and print the smallest image found (slow: minutes).
//! - `STRATA_PROPERTY_TRIES`: how often each shrinking candidate is tried before it counts as
//!   passing (default 1; more for differences that come and go, such as races).
//! - `STRATA_PROPERTY_REPEATS`: how often the race-prone layouts are unpacked (default 50).

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value;

const DEFAULT_CASES: u64 = 12;
const DEFAULT_SEED: u64 = 0x5EED_2026;
const DEFAULT_REPEATS: u64 = 50;

/// Files above this go through the applier's own thread rather than the writer threads.
const SMALL_FILE: usize = 128 * 1024;

/// Every time the generator gives an entry is before this; a directory with a later mtime was
/// made implicitly (as a parent) and got the time of its extraction, which is not compared.
const NAMED_TIMES_BEFORE: i64 = 1_700_000_000;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={value}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// PRNG: xorshift64*, seeded through splitmix64
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64, so that neighbouring seeds start far apart (and never at 0).
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The seed of case `case` of a run seeded with `seed`.
fn case_seed(seed: u64, case: u64) -> u64 {
    Rng::new(seed ^ case.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next()
}

// ---------------------------------------------------------------------------------------------
// Image descriptions: what the generator makes, what a failure prints, what shrinking edits
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum EntryKind {
    Dir,
    /// Contents: `len` bytes made from `fill`.
    File {
        len: usize,
        fill: u64,
    },
    Symlink(String),
    Hardlink(String),
    /// A whiteout or opaque marker: an empty regular file, its name says which.
    Marker,
    CharDevice,
}

#[derive(Clone, Debug)]
struct Spec {
    kind: EntryKind,
    /// Exactly as written in the tar header (a directory's ends in `/`).
    name: String,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    xattrs: Vec<(String, String)>,
}

impl Spec {
    fn new(kind: EntryKind, name: String) -> Spec {
        let mode = match kind {
            EntryKind::Dir => 0o755,
            EntryKind::Symlink(_) => 0o777,
            _ => 0o644,
        };
        Spec {
            kind,
            name,
            mode,
            owner: (0, 0),
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
        }
    }

    fn entry(&self) -> Entry {
        let entry = match &self.kind {
            EntryKind::Dir => Entry::dir(&self.name),
            EntryKind::File { len, fill } => Entry::file(&self.name, contents(*len, *fill)),
            EntryKind::Symlink(target) => Entry::symlink(&self.name, target),
            EntryKind::Hardlink(target) => Entry::hardlink(&self.name, target),
            EntryKind::Marker => Entry::file(&self.name, b""),
            EntryKind::CharDevice => Entry::char_device(&self.name, 1, 3),
        };
        let mut entry = entry
            .mode(self.mode)
            .owner(self.owner.0, self.owner.1)
            .mtime(self.mtime);
        for (key, value) in &self.xattrs {
            entry = entry.xattr(key, value);
        }
        entry
    }

    /// One line of a listing: `file  d/x  (12 B #3f2a)  mode=640  owner=1000:1000  user.k="v"`.
    fn describe(&self) -> String {
        let (word, what) = match &self.kind {
            EntryKind::Dir => ("dir", String::new()),
            EntryKind::File { len, fill } => ("file", format!("  ({len} B #{fill:x})")),
            EntryKind::Symlink(target) => ("sym", format!(" -> {target}")),
            EntryKind::Hardlink(target) => ("link", format!(" => {target}")),
            EntryKind::Marker if self.name.ends_with(".wh..wh..opq") => ("opq", String::new()),
            EntryKind::Marker => ("wh", String::new()),
            EntryKind::CharDevice => ("chr", String::new()),
        };
        let mut line = format!("{word:5} {}{what}", self.name);
        let default = Spec::new(self.kind.clone(), String::new());
        if !matches!(
            self.kind,
            EntryKind::Marker | EntryKind::Hardlink(_) | EntryKind::Symlink(_)
        ) && self.mode != default.mode
        {
            write!(line, "  mode={:o}", self.mode).unwrap();
        }
        if self.owner != (0, 0) {
            write!(line, "  owner={}:{}", self.owner.0, self.owner.1).unwrap();
        }
        if matches!(
            self.kind,
            EntryKind::Dir | EntryKind::File { .. } | EntryKind::Symlink(_)
        ) {
            write!(line, "  mtime={}", self.mtime).unwrap();
        }
        for (key, value) in &self.xattrs {
            write!(line, "  {key}={value:?}").unwrap();
        }
        line
    }
}

/// Deterministic contents: a short text, or random bytes for large files.
fn contents(len: usize, fill: u64) -> Vec<u8> {
    let mut rng = Rng::new(fill);
    if len <= 64 {
        let text = format!("{fill:016x}{fill:016x}{fill:016x}{fill:016x}");
        return text.as_bytes()[..len].to_vec();
    }
    (0..len).map(|_| rng.next() as u8).collect()
}

#[derive(Clone, Debug)]
struct ImageSpec {
    layers: Vec<Vec<Spec>>,
}

impl ImageSpec {
    fn write(&self, dir: &Path) -> WrittenImage {
        let mut image = Image::new();
        for layer in &self.layers {
            let mut built = Layer::new();
            for spec in layer {
                built = built.entry(spec.entry());
            }
            image = image.layer(built);
        }
        image.write(dir)
    }

    fn entries(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    fn listing(&self) -> String {
        let mut listing = String::new();
        for (index, layer) in self.layers.iter().enumerate() {
            writeln!(listing, "  layer {}/{}:", index + 1, self.layers.len()).unwrap();
            for spec in layer {
                writeln!(listing, "    {}", spec.describe()).unwrap();
            }
        }
        listing
    }

    /// Reads back what [`ImageSpec::listing`] wrote: the same image.
    fn parse(listing: &str) -> ImageSpec {
        let mut layers: Vec<Vec<Spec>> = Vec::new();
        for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if line.starts_with("layer") {
                layers.push(Vec::new());
                continue;
            }
            let spec = Spec::parse(line)
                .unwrap_or_else(|| panic!("cannot read the listing line {line:?}"));
            layers
                .last_mut()
                .expect("a listing starts with a layer line")
                .push(spec);
        }
        ImageSpec { layers }
    }
}

impl Spec {
    /// One line of [`Spec::describe`].
    fn parse(line: &str) -> Option<Spec> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let name = words.get(1)?.to_string();
        let (kind, rest) = match *words.first()? {
            "dir" => (EntryKind::Dir, &words[2..]),
            "wh" | "opq" => (EntryKind::Marker, &words[2..]),
            "chr" => (EntryKind::CharDevice, &words[2..]),
            "sym" => (EntryKind::Symlink(words.get(3)?.to_string()), &words[4..]),
            "link" => (EntryKind::Hardlink(words.get(3)?.to_string()), &words[4..]),
            "file" => {
                let len = words.get(2)?.trim_start_matches('(').parse().ok()?;
                let fill = words.get(4)?.trim_start_matches('#').trim_end_matches(')');
                let fill = u64::from_str_radix(fill, 16).ok()?;
                (EntryKind::File { len, fill }, words.get(5..)?)
            }
            _ => return None,
        };
        let mut spec = Spec::new(kind, name);
        for word in rest {
            let (key, value) = word.split_once('=')?;
            match key {
                "mode" => spec.mode = u32::from_str_radix(value, 8).ok()?,
                "mtime" => spec.mtime = value.parse().ok()?,
                "owner" => {
                    let (uid, gid) = value.split_once(':')?;
                    spec.owner = (uid.parse().ok()?, gid.parse().ok()?);
                }
                xattr => spec
                    .xattrs
                    .push((xattr.to_owned(), value.trim_matches('"').to_owned())),
            }
        }
        Some(spec)
    }
}

// ---------------------------------------------------------------------------------------------
// A model of the tree, just enough for the generator to name what exists
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File,
    Symlink(String),
}

/// Paths relative to the root, `""` for the root, following the changeset rules as strata
/// applies them (a whiteout spares what this layer made, however either names it).
/// The generator uses it to keep most images valid (hardlinks to files that exist, entries
/// under directories rather than files); where it is wrong, an image fails in every mode,
/// which the property allows.
#[derive(Clone, Debug, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
    /// What the current layer made, with the directories it is in, by resolved path.
    upper: BTreeSet<String>,
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.split('/').count()
    }
}

impl Model {
    /// Where `path` leads, symlinks on the way followed inside the root (and the last one too
    /// if `follow_last`), missing components kept as named. `None` on a loop.
    fn walk(&self, path: &str, follow_last: bool) -> Option<String> {
        let mut todo: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
        let mut at: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(component) = todo.pop() {
            match component.as_str() {
                "" | "." => continue,
                ".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            at.push(component);
            let last = todo.iter().all(|c| c.is_empty() || c == ".");
            if let Some(Node::Symlink(target)) = self.nodes.get(&at.join("/"))
                && (!last || follow_last)
            {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                at.pop();
                if target.starts_with('/') {
                    at.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_owned));
            }
        }
        Some(at.join("/"))
    }

    /// Whether `canonical` (as [`Model::walk`] gives it) can hold entries: a directory, or
    /// missing below directories (`mkdir -p` makes it).
    fn can_hold(&self, canonical: &str) -> bool {
        let mut prefix = String::new();
        for component in canonical.split('/').filter(|c| !c.is_empty()) {
            prefix = join(&prefix, component);
            match self.nodes.get(&prefix) {
                None => return true,
                Some(Node::Dir) => {}
                Some(_) => return false,
            }
        }
        true
    }

    /// The directory entries named `parent/…` go into, if they can go anywhere.
    fn parent_of_entries(&self, parent: &str) -> Option<String> {
        self.walk(parent, true).filter(|dir| self.can_hold(dir))
    }

    fn is_dir(&self, canonical: &str) -> bool {
        canonical.is_empty() || self.nodes.get(canonical) == Some(&Node::Dir)
    }

    fn remove_tree(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.nodes
            .retain(|name, _| name != path && !name.starts_with(&prefix));
    }

    fn mkdir_p(&mut self, canonical: &str) {
        let mut prefix = String::new();
        for component in canonical.split('/').filter(|c| !c.is_empty()) {
            prefix = join(&prefix, component);
            self.nodes.entry(prefix.clone()).or_insert(Node::Dir);
        }
    }

    fn children(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .keys()
            .filter_map(|path| path.strip_prefix(&prefix))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .map(|rest| join(dir, rest))
            .collect()
    }

    /// Removes what lower layers put at `canonical`.
    fn remove_lower(&mut self, canonical: &str) {
        if !self.upper.contains(canonical) {
            self.remove_tree(canonical);
        } else if self.is_dir(canonical) {
            for child in self.children(canonical) {
                self.remove_lower(&child);
            }
        }
    }

    /// The layer made `canonical`, and so the directories it is in.
    fn made(&mut self, canonical: &str) {
        let mut prefix = String::new();
        for component in canonical.split('/').filter(|c| !c.is_empty()) {
            prefix = join(&prefix, component);
            self.upper.insert(prefix.clone());
        }
    }

    fn apply(&mut self, spec: &Spec) {
        let name = spec.name.trim_end_matches('/');
        let (written_parent, base) = split(name);
        let Some(parent) = self.walk(written_parent, true) else {
            return;
        };
        if let Some(target) = base.strip_prefix(".wh.") {
            if !self.is_dir(&parent) {
                return;
            }
            if target == ".wh..opq" {
                for child in self.children(&parent) {
                    self.remove_lower(&child);
                }
                self.made(&parent);
            } else {
                self.remove_lower(&join(&parent, target));
            }
            return;
        }
        let node = match &spec.kind {
            EntryKind::Dir => Node::Dir,
            EntryKind::File { .. } | EntryKind::Hardlink(_) => Node::File,
            EntryKind::Symlink(target) => Node::Symlink(target.clone()),
            EntryKind::Marker => unreachable!("markers are named .wh.*"),
            // Skipped: leaves no trace.
            EntryKind::CharDevice => return,
        };
        if !self.can_hold(&parent) {
            return;
        }
        self.mkdir_p(&parent);
        let path = join(&parent, base);
        if !(node == Node::Dir && self.nodes.get(&path) == Some(&Node::Dir)) {
            self.remove_tree(&path);
            self.nodes.insert(path.clone(), node);
        }
        self.made(&path);
    }

    fn end_layer(&mut self) {
        self.upper.clear();
    }

    fn dirs(&self) -> Vec<String> {
        let mut dirs = vec![String::new()];
        dirs.extend(
            self.nodes
                .iter()
                .filter(|(_, node)| **node == Node::Dir)
                .map(|(path, _)| path.clone()),
        );
        dirs
    }

    fn files(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, node)| **node == Node::File)
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Symlinks that lead to a directory: `(symlink, directory)`.
    fn aliases(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter(|(_, node)| matches!(node, Node::Symlink(_)))
            .filter_map(|(path, _)| {
                let dir = self.walk(path, true)?;
                (self.is_dir(&dir) && !dir.is_empty()).then(|| (path.clone(), dir))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

/// Every name, file, directory and symlink alike: layers collide often.
const NAMES: &[&str] = &["a", "b", "c", "d", "e", "s"];
const FILE_MODES: &[u32] = &[0o644, 0o644, 0o755, 0o600, 0o640, 0o4755, 0o444];
const DIR_MODES: &[u32] = &[0o755, 0o755, 0o700, 0o750, 0o775, 0o1777, 0o555, 0o2755];
const OWNERS: &[(u64, u64)] = &[(0, 0), (0, 0), (0, 0), (1000, 1000), (0, 42), (7, 0)];

struct Generator {
    rng: Rng,
    model: Model,
    /// A counter that makes every mtime and file content different.
    serial: u64,
    /// This layer's entries go only into the root and the directories it names itself (so
    /// that `--jobs` can extract it on nothing, in a parentless snapshot), with few exceptions.
    contained: bool,
    /// Directories this layer named, as written.
    layer_dirs: Vec<String>,
    /// Files this layer made where they were written (hardlink targets of a contained layer).
    layer_files: Vec<String>,
    /// Directories this layer's entries named as parents, whether or not they exist: later
    /// entries name them again (as parents, or as directories made after the fact).
    mentioned: Vec<String>,
}

impl Generator {
    fn image(seed: u64) -> ImageSpec {
        let mut generator = Generator {
            rng: Rng::new(seed),
            model: Model::default(),
            serial: 0,
            contained: false,
            layer_dirs: Vec::new(),
            layer_files: Vec::new(),
            mentioned: Vec::new(),
        };
        let layers = generator.rng.range(2, 5);
        let layers = (0..layers).map(|index| generator.layer(index)).collect();
        ImageSpec { layers }
    }

    fn layer(&mut self, index: usize) -> Vec<Spec> {
        let count = self.rng.range(3, 14);
        self.contained = index > 0 && self.rng.percent(45);
        self.layer_dirs.clear();
        self.layer_files.clear();
        self.mentioned.clear();
        let mut specs = Vec::with_capacity(count);
        for _ in 0..count {
            if self.rng.percent(4) {
                self.burst(&mut specs);
                continue;
            }
            let spec = self.entry(index);
            // A whiteout below a directory that does not exist: often, the directory made
            // right after, and a file in it.
            let name = spec.name.clone();
            let (parent, base) = split(&name);
            let missing = base.starts_with(".wh.")
                && !parent.is_empty()
                && self
                    .model
                    .walk(parent, true)
                    .is_some_and(|dir| !self.model.nodes.contains_key(&dir));
            self.push(&mut specs, spec);
            if missing && self.rng.percent(50) {
                let mut made = Spec::new(EntryKind::Dir, format!("{parent}/"));
                made.mtime = self.mtime();
                self.push(&mut specs, made);
                let inside = join(parent, &self.name());
                let file = self.file_at(inside);
                self.push(&mut specs, file);
            }
        }
        self.model.end_layer();
        specs
    }

    fn push(&mut self, specs: &mut Vec<Spec>, spec: Spec) {
        self.model.apply(&spec);
        let name = spec.name.trim_end_matches('/').to_owned();
        let parent = split(&name).0;
        if !parent.is_empty() && !self.mentioned.iter().any(|m| m == parent) {
            self.mentioned.push(parent.to_owned());
        }
        match spec.kind {
            EntryKind::Dir => self.layer_dirs.push(name),
            EntryKind::File { .. } if self.model.walk(&name, false).as_ref() == Some(&name) => {
                self.layer_files.push(name)
            }
            _ => {}
        }
        specs.push(spec);
    }

    /// Many small files in one directory (work for the writer threads), `f0`, `f1`, … in every
    /// layer so that they collide; then, often, whiteouts of them or an opaque marker, through
    /// another path to that directory where there is one.
    fn burst(&mut self, specs: &mut Vec<Spec>) {
        let parent = self.parent();
        let Some(dir) = self.model.parent_of_entries(&parent) else {
            return;
        };
        let count = self.rng.range(8, 40);
        for i in 0..count {
            let mut spec = self.file_at(join(&parent, &format!("f{i}")));
            // What `skipped` lists stays rare: it comes from single entries.
            spec.xattrs
                .retain(|(key, _)| key.starts_with("user.") && !key.starts_with("user.overlay."));
            if let EntryKind::File { len, .. } = &mut spec.kind
                && *len > SMALL_FILE
                && self.rng.percent(70)
            {
                *len = 7;
            }
            self.push(specs, spec);
        }
        // Other paths to the same directory.
        let mut ways: Vec<String> = self
            .model
            .aliases()
            .into_iter()
            .filter(|(_, to)| *to == dir)
            .map(|(alias, _)| alias)
            .collect();
        if self.model.is_dir(&dir) {
            ways.push(dir.clone());
        }
        ways.retain(|way| *way != parent);
        let other = if ways.is_empty() || self.rng.percent(25) {
            parent
        } else {
            self.rng.pick(&ways).clone()
        };
        match self.rng.below(4) {
            0 | 1 => {
                for i in 0..count {
                    if self.rng.percent(60) {
                        let spec = Spec::new(EntryKind::Marker, join(&other, &format!(".wh.f{i}")));
                        self.push(specs, spec);
                    }
                }
            }
            2 => {
                let spec = Spec::new(EntryKind::Marker, join(&other, ".wh..wh..opq"));
                self.push(specs, spec);
            }
            _ => {}
        }
    }

    /// The root and the directories this layer named (that can still hold entries).
    fn own_dirs(&self) -> Vec<String> {
        let mut dirs = vec![String::new()];
        dirs.extend(
            self.layer_dirs
                .iter()
                .filter(|dir| depth(dir) <= 2 && self.model.walk(dir, false).as_ref() == Some(*dir))
                .filter(|dir| self.model.is_dir(dir))
                .cloned(),
        );
        dirs
    }

    fn mtime(&mut self) -> u64 {
        self.serial += 1;
        1_000_000_000 + self.serial * 1_000 + self.rng.below(1_000) as u64
    }

    fn name(&mut self) -> String {
        (*self.rng.pick(NAMES)).to_owned()
    }

    /// A parent for a new entry, as written: the root, a directory, a symlink to one (an
    /// alias), or a directory that does not exist yet.
    fn parent(&mut self) -> String {
        if !self.mentioned.is_empty() && self.rng.percent(20) {
            let mentioned = self.rng.pick(&self.mentioned).clone();
            if self.model.parent_of_entries(&mentioned).is_some() {
                return mentioned;
            }
        }
        if self.contained && self.rng.percent(92) {
            let dirs = self.own_dirs();
            return self.rng.pick(&dirs).clone();
        }
        let dirs: Vec<String> = self
            .model
            .dirs()
            .into_iter()
            .filter(|dir| depth(dir) <= 2)
            .collect();
        let aliases = self.model.aliases();
        let roll = self.rng.below(100);
        if roll < 25 && !aliases.is_empty() {
            let (alias, _) = self.rng.pick(&aliases).clone();
            return alias;
        }
        if roll < 38 {
            let base = self.rng.pick(&dirs).clone();
            if depth(&base) <= 1 {
                let candidate = join(&base, &self.name());
                if self.model.parent_of_entries(&candidate).is_some() {
                    return candidate;
                }
            }
        }
        self.rng.pick(&dirs).clone()
    }

    /// `parent/name` for a new entry whose parent can hold it (root as the last resort).
    fn path(&mut self) -> String {
        for _ in 0..8 {
            let parent = self.parent();
            if self.model.parent_of_entries(&parent).is_some() && depth(&parent) <= 3 {
                return join(&parent, &self.name());
            }
        }
        self.name()
    }

    fn xattrs(&mut self, percent: usize) -> Vec<(String, String)> {
        let mut xattrs = Vec::new();
        if self.rng.percent(percent) {
            let key = format!("user.{}", self.rng.pick(&["k", "k", "m"]));
            let value = self.rng.pick(&["", "1", "two", "three"]).to_string();
            xattrs.push((key, value));
        }
        // Rarely, one the kernel refuses or strata must not set: listed in `skipped`.
        if self.rng.below(1000) < 3 {
            let key = self
                .rng
                .pick(&["trusted.t", "user.overlay.opaque"])
                .to_string();
            xattrs.push((key, "y".to_owned()));
        }
        xattrs
    }

    fn entry(&mut self, layer: usize) -> Spec {
        let roll = self.rng.below(100);
        let first = layer == 0;
        match roll {
            0..=31 => self.file(),
            32..=49 => self.dir(),
            50..=63 => self.symlink(),
            64..=73 if !first => self.hardlink(),
            64..=73 => self.file(),
            74..=87 if !first || self.rng.percent(30) => self.whiteout(),
            74..=87 => self.dir(),
            88..=93 => self.opaque(),
            94..=96 => self.hardlink(),
            // Rarely, a device: skipped, and listed in `skipped`.
            97 if self.rng.percent(10) => Spec::new(EntryKind::CharDevice, self.path()),
            97 => self.file(),
            _ => self.file_through_alias(),
        }
    }

    fn file(&mut self) -> Spec {
        let path = self.path();
        self.file_at(path)
    }

    fn file_at(&mut self, path: String) -> Spec {
        let len = if self.rng.percent(6) {
            SMALL_FILE + self.rng.range(1, 70_000)
        } else {
            self.rng.range(0, 40)
        };
        self.serial += 1;
        // Shown whole in listings, so that a listing remakes the same contents.
        let fill = (self.rng.next() ^ self.serial) & 0xffff;
        let mut spec = Spec::new(EntryKind::File { len, fill }, path);
        spec.mode = *self.rng.pick(FILE_MODES);
        spec.owner = *self.rng.pick(OWNERS);
        spec.mtime = self.mtime();
        spec.xattrs = self.xattrs(20);
        spec
    }

    /// A file written through a symlink to a directory, `s/x`.
    fn file_through_alias(&mut self) -> Spec {
        let aliases = self.model.aliases();
        if aliases.is_empty() || self.contained {
            return self.file();
        }
        let (alias, _) = self.rng.pick(&aliases).clone();
        let path = join(&alias, &self.name());
        self.file_at(path)
    }

    fn dir(&mut self) -> Spec {
        // Half the time a directory that exists already, named again with new metadata.
        let existing: Vec<String> = self
            .model
            .dirs()
            .into_iter()
            .filter(|dir| !dir.is_empty())
            .collect();
        let own = self.own_dirs();
        let existing: Vec<String> = existing
            .into_iter()
            .filter(|dir| !self.contained || own.contains(&split(dir).0.to_owned()))
            .collect();
        let roll = self.rng.below(100);
        let mentioned: Vec<String> = self
            .mentioned
            .iter()
            .filter(|dir| self.model.parent_of_entries(split(dir).0).is_some())
            .cloned()
            .collect();
        let path = if !mentioned.is_empty() && roll < 20 {
            // A directory the layer already named as a parent (made by then or not).
            self.rng.pick(&mentioned).clone()
        } else if !existing.is_empty() && roll < 60 {
            self.rng.pick(&existing).clone()
        } else {
            self.path()
        };
        let mut spec = Spec::new(EntryKind::Dir, format!("{path}/"));
        spec.mode = *self.rng.pick(DIR_MODES);
        spec.owner = *self.rng.pick(OWNERS);
        spec.mtime = self.mtime();
        spec.xattrs = self.xattrs(45);
        spec
    }

    fn symlink(&mut self) -> Spec {
        let path = self.path();
        let (parent, _) = split(&path);
        let parent_depth = self
            .model
            .parent_of_entries(parent)
            .map_or(0, |dir| depth(&dir));
        let dirs: Vec<String> = self
            .model
            .dirs()
            .into_iter()
            .filter(|dir| !dir.is_empty())
            .collect();
        let files = self.model.files();
        let roll = self.rng.below(100);
        let target = if roll < 65 && !dirs.is_empty() {
            // An alias of a directory, in every form a link can name it.
            let dir = self.rng.pick(&dirs).clone();
            match self.rng.below(4) {
                0 => format!("/{dir}"),
                1 => format!("{}{dir}", "../".repeat(parent_depth.max(1))),
                2 if parent_depth == 0 => format!("./{dir}/"),
                _ => {
                    // Relative to the link's directory.
                    format!("{}{dir}", "../".repeat(parent_depth))
                }
            }
        } else if roll < 85 && !files.is_empty() {
            format!("/{}", self.rng.pick(&files))
        } else {
            // Dangling, or the name of something a later entry may make.
            self.name()
        };
        let mut spec = Spec::new(EntryKind::Symlink(target), path);
        spec.owner = *self.rng.pick(OWNERS);
        spec.mtime = self.mtime();
        spec
    }

    fn hardlink(&mut self) -> Spec {
        let files = if self.contained && self.rng.percent(90) {
            self.layer_files
                .iter()
                .filter(|file| self.model.nodes.get(*file) == Some(&Node::File))
                .cloned()
                .collect()
        } else {
            self.model.files()
        };
        if files.is_empty() {
            return self.file();
        }
        let target = self.rng.pick(&files).clone();
        // Sometimes named through a symlink to its directory.
        let written_target = {
            let (dir, name) = split(&target);
            let ways: Vec<String> = self
                .model
                .aliases()
                .into_iter()
                .filter(|(_, to)| to == dir)
                .map(|(alias, _)| join(&alias, name))
                .collect();
            if !ways.is_empty() && self.rng.percent(25) {
                self.rng.pick(&ways).clone()
            } else {
                target.clone()
            }
        };
        for _ in 0..8 {
            let path = self.path();
            let resolved = self
                .model
                .parent_of_entries(split(&path).0)
                .map(|parent| join(&parent, split(&path).1));
            if resolved.as_deref() != Some(target.as_str())
                && !target.starts_with(&format!("{}/", resolved.unwrap_or_default()))
            {
                return Spec::new(EntryKind::Hardlink(written_target), path);
            }
        }
        self.file()
    }

    /// `dir/.wh.name`: of something that exists (by its own path or through an alias), or not.
    fn whiteout(&mut self) -> Spec {
        let existing: Vec<String> = self.model.nodes.keys().cloned().collect();
        let aliases = self.model.aliases();
        let roll = self.rng.below(100);
        let target = if roll < 15 {
            // Below a directory that does not exist (yet), in one this layer made if there is
            // one: a later entry may make it (overlayfs looked it up and missed it by then).
            let mut dirs = self.own_dirs();
            if dirs.len() > 1 {
                dirs.remove(0);
            }
            let dir = self.rng.pick(&dirs).clone();
            let missing = join(&dir, &self.name());
            match self.model.walk(&missing, true) {
                Some(resolved) if !self.model.nodes.contains_key(&resolved) => {
                    join(&missing, &self.name())
                }
                _ => self.path(),
            }
        } else if self.contained && roll < 90 {
            // In the root or a directory of this layer, of a name lower layers may have there.
            let dirs = self.own_dirs();
            let dir = self.rng.pick(&dirs).clone();
            let canonical = self.model.walk(&dir, true).unwrap_or_default();
            let children = self.model.children(&canonical);
            let child = if children.is_empty() || self.rng.percent(30) {
                self.name()
            } else {
                let child: &String = self.rng.pick(&children);
                split(child).1.to_owned()
            };
            join(&dir, &child)
        } else if roll < 45 && !existing.is_empty() {
            self.rng.pick(&existing).clone()
        } else if roll < 80 && !aliases.is_empty() {
            let (alias, dir) = self.rng.pick(&aliases).clone();
            let children = self.model.children(&dir);
            let child = if children.is_empty() || self.rng.percent(20) {
                self.name()
            } else {
                let child: &String = self.rng.pick(&children);
                split(child).1.to_owned()
            };
            join(&alias, &child)
        } else {
            self.path()
        };
        let (parent, name) = split(&target);
        Spec::new(EntryKind::Marker, join(parent, &format!(".wh.{name}")))
    }

    /// `dir/.wh..wh..opq`, in a directory named by its path or through an alias.
    fn opaque(&mut self) -> Spec {
        let aliases = self.model.aliases();
        let dir = if self.contained && self.rng.percent(90) {
            self.rng.pick(&self.own_dirs()).clone()
        } else if !aliases.is_empty() && self.rng.percent(35) {
            self.rng.pick(&aliases).0.clone()
        } else {
            self.rng.pick(&self.model.dirs()).clone()
        };
        Spec::new(EntryKind::Marker, join(&dir, ".wh..wh..opq"))
    }
}

// ---------------------------------------------------------------------------------------------
// Unpacking every way and comparing
// ---------------------------------------------------------------------------------------------

enum Outcome {
    Unpacked {
        tree: Tree,
        report: Value,
    },
    /// Exit status 1, with the last line of stderr.
    Failed(String),
    /// A panic, a signal, or success without a report: never acceptable.
    Crashed(String),
}

struct Run {
    name: &'static str,
    outcome: Outcome,
    /// Left behind by a failed run (DEST or a staging directory).
    debris: Vec<String>,
}

/// `strata unpack --store STORE --jobs N --json IMAGE DEST`.
fn unpack_jobs(env: &TestEnv, store: &Path, jobs: u32, image: &Path, dest: &Path) -> Output {
    let jobs = jobs.to_string();
    env.strata(args![
        "unpack", "--store", store, "--jobs", jobs, "--json", image, dest
    ])
}

fn observe(name: &'static str, out: Output, dest: &Path) -> Run {
    let outcome = match out.status.code() {
        Some(0) => match serde_json::from_str(&out.stdout) {
            Ok(report) => Outcome::Unpacked {
                tree: Tree::scan(dest),
                report,
            },
            Err(e) => Outcome::Crashed(format!("no JSON report ({e}): {out}")),
        },
        Some(1) => {
            let line = out.stderr.lines().rfind(|l| !l.trim().is_empty());
            Outcome::Failed(line.unwrap_or("(nothing on stderr)").to_owned())
        }
        _ => Outcome::Crashed(format!("{out}")),
    };
    let mut debris = staging_dirs(dest);
    if !matches!(outcome, Outcome::Unpacked { .. }) && fs::symlink_metadata(dest).is_ok() {
        debris.push(dest.display().to_string());
    }
    Run {
        name,
        outcome,
        debris,
    }
}

/// Unpacks `image` with a cold store (`--jobs 1`: each layer into its snapshot and DEST in one
/// pass, whatever the CPU count), the same store warm (DEST copied from the snapshots),
/// `--no-store`, and `--jobs 4` and `--jobs 2` into cold stores of their own.
fn unpack_every_way(env: &TestEnv, image: &Path) -> Vec<Run> {
    let image_arg = image.as_os_str();
    let mut runs = Vec::new();
    for (name, mode, extra) in [
        ("store", Mode::Store, &["--jobs", "1"][..]),
        ("warm", Mode::Store, &[][..]),
        ("no-store", Mode::NoStore, &[][..]),
        ("jobs-4", Mode::SideBySide, &[][..]),
    ] {
        let dest = fresh_dest(env, mode);
        let out = run_unpack(env, mode, extra, image_arg, &dest);
        runs.push(observe(name, out, &dest));
    }
    let dest = fresh_dest(env, Mode::SideBySide);
    let out = unpack_jobs(env, &env.path().join("jobs-2-store"), 2, image, &dest);
    runs.push(observe("jobs-2", out, &dest));
    runs
}

/// What must agree, path by path: [`comparable`], and the mtime of directories that the image
/// names (a parent made implicitly gets the time of its extraction).
fn fingerprint(tree: &Tree) -> BTreeMap<String, String> {
    tree.iter()
        .map(|(path, node)| {
            let mut line = comparable(node);
            if node.kind == common::Kind::Dir && node.mtime.0 < NAMED_TIMES_BEFORE {
                write!(line, " dir-mtime={:?}", node.mtime).unwrap();
            }
            if node.unreadable {
                line.push_str(" UNREADABLE");
            }
            (path.clone(), line)
        })
        .collect()
}

fn skipped_lists(report: &Value) -> Vec<Value> {
    report["layers"]
        .as_array()
        .map(|layers| layers.iter().map(|l| l["skipped"].clone()).collect())
        .unwrap_or_default()
}

/// One difference between two runs: `key` (which runs, which aspect) to tell differences
/// apart while shrinking, and the details.
struct Difference {
    key: String,
    details: String,
}

/// How every run differs from the first (and failed runs from a clean failure).
fn differences(runs: &[Run]) -> Vec<Difference> {
    let mut found = Vec::new();
    for run in runs {
        if let Outcome::Crashed(what) = &run.outcome {
            found.push(Difference {
                key: format!("{}: crashed", run.name),
                details: what.clone(),
            });
        }
        if !run.debris.is_empty() {
            found.push(Difference {
                key: format!("{}: debris after a failure", run.name),
                details: format!("left behind: {:?}", run.debris),
            });
        }
    }
    // Every run must succeed, or every run fail.
    let failed: Vec<&Run> = runs
        .iter()
        .filter(|run| !matches!(run.outcome, Outcome::Unpacked { .. }))
        .collect();
    if !failed.is_empty() && failed.len() < runs.len() {
        let names = |runs: &[&Run]| runs.iter().map(|r| r.name).collect::<Vec<_>>().join(", ");
        let succeeded: Vec<&Run> = runs
            .iter()
            .filter(|run| matches!(run.outcome, Outcome::Unpacked { .. }))
            .collect();
        let details = failed
            .iter()
            .map(|run| match &run.outcome {
                Outcome::Failed(line) => format!("    {}: {line}", run.name),
                _ => format!("    {}: crashed", run.name),
            })
            .collect::<Vec<_>>()
            .join("\n");
        found.push(Difference {
            key: format!("{} failed, {} succeeded", names(&failed), names(&succeeded)),
            details,
        });
    }
    // The runs that succeeded, each against the first of them.
    let mut unpacked = runs.iter().filter_map(|run| match &run.outcome {
        Outcome::Unpacked { tree, report } => Some((run.name, tree, report)),
        _ => None,
    });
    let Some((base, a, ra)) = unpacked.next() else {
        return found;
    };
    let fa = fingerprint(a);
    for (name, b, rb) in unpacked {
        let pair = format!("{base} vs {name}");
        let fb = fingerprint(b);
        let paths: BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
        let lines: Vec<String> = paths
            .into_iter()
            .filter(|path| fa.get(*path) != fb.get(*path))
            .map(|path| {
                format!(
                    "    {path}:\n      {base:8} {}\n      {name:8} {}",
                    fa.get(path).map_or("(absent)", String::as_str),
                    fb.get(path).map_or("(absent)", String::as_str),
                )
            })
            .collect();
        if !lines.is_empty() {
            found.push(Difference {
                key: format!("{pair}: tree"),
                details: lines.join("\n"),
            });
        }
        let (la, lb) = (link_groups(a), link_groups(b));
        if la != lb {
            found.push(Difference {
                key: format!("{pair}: hardlinks"),
                details: format!("    {base}: {la:?}\n    {name}: {lb:?}"),
            });
        }
        let (sa, sb) = (skipped_lists(ra), skipped_lists(rb));
        if sa != sb {
            found.push(Difference {
                key: format!("{pair}: skipped"),
                details: format!(
                    "    {base}: {}\n    {name}: {}",
                    Value::from(sa),
                    Value::from(sb)
                ),
            });
        }
    }
    found
}

fn all_failed(runs: &[Run]) -> Option<&str> {
    runs.iter()
        .map(|run| match &run.outcome {
            Outcome::Failed(line) => Some(line.as_str()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(|lines| lines[0])
}

/// What unpacking an image every way showed.
struct Checked {
    differences: Vec<Difference>,
    /// The error, when every mode failed.
    all_failed: Option<String>,
    /// How many layers `--jobs 4` extracted on nothing.
    parentless: usize,
}

/// Writes `spec` into a fresh env and unpacks it every way.
fn check(spec: &ImageSpec) -> Checked {
    let env = TestEnv::new();
    let image = spec.write(&env.path().join("img"));
    env.own(&image.path);
    let runs = unpack_every_way(&env, &image.path);
    let parentless = runs
        .iter()
        .filter(|run| run.name == "jobs-4")
        .filter_map(|run| match &run.outcome {
            Outcome::Unpacked { report, .. } => report["layers"].as_array(),
            _ => None,
        })
        .flatten()
        .filter(|layer| layer["parentless"] == true)
        .count();
    Checked {
        differences: differences(&runs),
        all_failed: all_failed(&runs).map(str::to_owned),
        parentless,
    }
}

fn report(differences: &[Difference]) -> String {
    let mut text = String::new();
    for difference in differences {
        let lines: Vec<&str> = difference.details.lines().collect();
        let mut details = lines[..lines.len().min(30)].join("\n");
        if lines.len() > 30 {
            write!(details, "\n    … {} more lines", lines.len() - 30).unwrap();
        }
        writeln!(text, "  {}\n{details}", difference.key).unwrap();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Shrinking
// ---------------------------------------------------------------------------------------------

/// Whether two differences are of one kind: the same aspect of the same run, whichever run
/// it is compared with; any runs failing while others succeed (which ones may vary by chance).
fn similar(a: &str, b: &str) -> bool {
    let outcome = |key: &str| key.contains(" failed, ") && key.ends_with(" succeeded");
    let against = |key: &str| {
        key.split_once(" vs ")
            .map_or(key, |(_, rest)| rest)
            .to_owned()
    };
    (outcome(a) && outcome(b)) || against(a) == against(b)
}

/// Whether `spec` still shows a difference like `key`, in any of `tries` attempts.
fn still_differs(spec: &ImageSpec, key: &str, tries: u64) -> bool {
    (0..tries).any(|_| check(spec).differences.iter().any(|d| similar(&d.key, key)))
}

/// The smallest image found that still shows the difference `key`: layers, then entries, then
/// attributes removed one at a time, for as long as any goes.
fn shrink(spec: &ImageSpec, key: &str, tries: u64) -> ImageSpec {
    let mut best = spec.clone();
    let mut attempts = 0;
    loop {
        let mut progress = false;
        let mut layer = 0;
        while layer < best.layers.len() && best.layers.len() > 1 {
            let mut candidate = best.clone();
            candidate.layers.remove(layer);
            attempts += 1;
            if still_differs(&candidate, key, tries) {
                best = candidate;
                progress = true;
            } else {
                layer += 1;
            }
        }
        for layer in 0..best.layers.len() {
            let mut entry = best.layers[layer].len();
            while entry > 0 {
                entry -= 1;
                if best.layers[layer].len() == 1 {
                    break;
                }
                let mut candidate = best.clone();
                candidate.layers[layer].remove(entry);
                attempts += 1;
                if still_differs(&candidate, key, tries) {
                    best = candidate;
                    progress = true;
                }
            }
        }
        for layer in 0..best.layers.len() {
            for entry in 0..best.layers[layer].len() {
                let current = &best.layers[layer][entry];
                let plain = Spec {
                    kind: match current.kind {
                        EntryKind::File { len, fill } => EntryKind::File {
                            len: if len > SMALL_FILE { len } else { len.min(1) },
                            fill,
                        },
                        ref other => other.clone(),
                    },
                    ..Spec::new(current.kind.clone(), current.name.clone())
                };
                let mut simpler = vec![plain.clone()];
                if let EntryKind::File { len, fill } = current.kind
                    && len > SMALL_FILE
                {
                    simpler.push(Spec {
                        kind: EntryKind::File { len: 1, fill },
                        ..current.clone()
                    });
                }
                for simpler in simpler {
                    if simpler.describe() == best.layers[layer][entry].describe() {
                        continue;
                    }
                    let mut candidate = best.clone();
                    candidate.layers[layer][entry] = simpler;
                    attempts += 1;
                    if still_differs(&candidate, key, tries) {
                        best = candidate;
                        progress = true;
                    }
                }
            }
        }
        eprintln!(
            "shrinking: {} layers, {} entries after {attempts} attempts",
            best.layers.len(),
            best.entries()
        );
        if !progress {
            return best;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The property
// ---------------------------------------------------------------------------------------------

#[test]
fn every_way_of_unpacking_gives_the_same_tree() {
    let seed = env_u64("STRATA_PROPERTY_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("STRATA_PROPERTY_CASES").unwrap_or(DEFAULT_CASES);
    let shrinking = std::env::var_os("STRATA_PROPERTY_SHRINK").is_some();
    let tries = env_u64("STRATA_PROPERTY_TRIES").unwrap_or(1).max(1);

    // (what to call it, the image)
    let images: Vec<(String, ImageSpec)> =
        if let Some(file) = std::env::var_os("STRATA_PROPERTY_IMAGE") {
            let listing = fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", Path::new(&file).display()));
            let label = format!("the image listed in {}", Path::new(&file).display());
            vec![(label, ImageSpec::parse(&listing))]
        } else {
            let chosen: Vec<u64> = match env_u64("STRATA_PROPERTY_CASE") {
                Some(case) => vec![case],
                None => (0..cases).collect(),
            };
            chosen
                .into_iter()
                .map(|case| {
                    let label = format!(
                        "seed {seed:#x}, case {case} (STRATA_PROPERTY_SEED={seed:#x} \
                     STRATA_PROPERTY_CASE={case} cargo test --test property)"
                    );
                    (label, Generator::image(case_seed(seed, case)))
                })
                .collect()
        };

    let mut failures = Vec::new();
    let mut all_failing = 0;
    let (mut parentless, mut later_layers) = (0, 0);
    for (label, spec) in &images {
        let checked = check(spec);
        parentless += checked.parentless;
        later_layers += spec.layers.len() - 1;
        let found = checked.differences;
        if let Some(line) = checked.all_failed {
            all_failing += 1;
            eprintln!(
                "{label}: every mode failed alike: {line}\n{}",
                spec.listing()
            );
        }
        if found.is_empty() {
            continue;
        }
        let mut text = format!(
            "{label}: the modes differ:\n{}image:\n{}",
            report(&found),
            spec.listing()
        );
        if shrinking {
            let key = &found[0].key;
            let small = shrink(spec, key, tries);
            let again = check(&small).differences;
            let shown: Vec<Difference> =
                again.into_iter().filter(|d| similar(&d.key, key)).collect();
            write!(
                text,
                "shrunk to {} entries, still {key}:\n{}image:\n{}",
                small.entries(),
                report(&shown),
                small.listing()
            )
            .unwrap();
        }
        eprintln!("{text}");
        failures.push(text);
    }
    eprintln!(
        "{all_failing} of {} image(s) failed in every mode; --jobs 4 extracted {parentless} of \
         {later_layers} layers above the first on nothing",
        images.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} image(s) differ between modes; the first:\n{}",
        failures.len(),
        images.len(),
        failures[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Race-prone layouts, many times over
// ---------------------------------------------------------------------------------------------

const RACE_FILES: usize = 64;

fn file(name: String, serial: usize) -> Spec {
    let mut spec = Spec::new(
        EntryKind::File {
            len: 16,
            fill: serial as u64,
        },
        name,
    );
    spec.mtime = 1_200_000_000 + serial as u64;
    spec
}

fn dir(name: &str) -> Spec {
    let mut spec = Spec::new(EntryKind::Dir, name.to_owned());
    spec.mtime = 1_100_000_000;
    spec
}

fn marker(name: String) -> Spec {
    Spec::new(EntryKind::Marker, name)
}

fn symlink(name: &str, target: &str) -> Spec {
    Spec::new(EntryKind::Symlink(target.to_owned()), name.to_owned())
}

/// `RACE_FILES` small files `DIR/aN` (contents numbered from `serial`).
fn files(dir: &str, serial: usize) -> impl Iterator<Item = Spec> {
    (0..RACE_FILES).map(move |i| file(format!("{dir}/a{i}"), serial + i))
}

/// Whiteouts `DIR/.wh.aN`.
fn whiteouts(dir: &str) -> impl Iterator<Item = Spec> {
    (0..RACE_FILES).map(move |i| marker(format!("{dir}/.wh.a{i}")))
}

/// The layouts: small files go to the writer threads while whiteouts or opaque markers that
/// reach the same names through another path to their directory come after them.
fn race_layouts() -> Vec<(&'static str, ImageSpec)> {
    // A second layer above the race layer, so that `--jobs` has two layers to extract: the
    // first goes into its snapshot alone, with the writer threads, as with `--no-store`.
    let base = || vec![dir("base/"), file("base/f".to_owned(), 999)];
    let image = |layers: Vec<Vec<Spec>>| ImageSpec { layers };
    let mut layouts = Vec::new();

    let mut layer = vec![dir("d/"), symlink("s", "d")];
    layer.extend(files("d", 0));
    layer.extend(whiteouts("s"));
    layouts.push((
        "one layer makes d/, s -> d, d/aN, then s/.wh.aN",
        image(vec![layer, base()]),
    ));

    let mut layer = vec![dir("real/"), symlink("link", "real")];
    layer.extend(files("link", 0));
    layer.extend(whiteouts("real"));
    layouts.push((
        "one layer makes real/, link -> real, link/aN, then real/.wh.aN",
        image(vec![layer, base()]),
    ));

    let mut lower = vec![dir("d/"), symlink("s", "d")];
    lower.extend(files("d", 0));
    let mut upper: Vec<Spec> = files("d", 100).collect();
    upper.extend(whiteouts("s"));
    layouts.push((
        "lower d/aN and s -> d; upper d/aN again, s/.wh.aN",
        image(vec![lower, upper]),
    ));

    let mut lower = vec![dir("real/")];
    lower.extend(files("real", 0));
    let mut upper = vec![symlink("link", "real")];
    upper.extend(files("link", 100));
    upper.extend(whiteouts("real"));
    layouts.push((
        "lower real/aN; upper link -> real, link/aN again, real/.wh.aN",
        image(vec![lower, upper]),
    ));

    let mut upper = vec![symlink("link", "real")];
    upper.extend(files("link", 100));
    upper.push(marker(".wh.real".to_owned()));
    layouts.push((
        "lower real/; upper link -> real, link/aN, .wh.real",
        image(vec![
            vec![dir("real/"), file("real/b".to_owned(), 999)],
            upper,
        ]),
    ));

    let mut lower = vec![dir("real/")];
    lower.extend(files("real", 0));
    let mut upper = vec![symlink("link", "real")];
    upper.extend(files("link", 100));
    upper.push(marker("real/.wh..wh..opq".to_owned()));
    layouts.push((
        "lower real/aN; upper link -> real, link/aN again, real/.wh..wh..opq",
        image(vec![lower, upper]),
    ));
    layouts
}

/// Unpacks each layout every way once, then `--no-store` (where the writer threads run
/// freely) `STRATA_PROPERTY_REPEATS - 1` more times and, with the overlay snapshotter, every
/// sixteenth time `--jobs` into a cold store too (a cold store costs several times as much):
/// every run must give the tree the first one gave.
#[test]
fn writes_and_whiteouts_through_directory_aliases_give_one_tree_every_time() {
    let repeats = env_u64("STRATA_PROPERTY_REPEATS")
        .unwrap_or(DEFAULT_REPEATS)
        .max(1);
    let mut failures = Vec::new();
    for (what, spec) in race_layouts() {
        let env = TestEnv::new();
        let image = spec.write(&env.path().join("img"));
        env.own(&image.path);
        let first = unpack_every_way(&env, &image.path);
        // `--jobs` extracts side by side, a snapshot at a time with the writer threads, only
        // with the overlay snapshotter: with the native one it is the cold store's single pass.
        let side_by_side = fs::read(env.store().join("store.json"))
            .ok()
            .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
            .is_some_and(|store| store["snapshotter"] == "overlay");
        for difference in differences(&first) {
            failures.push(format!("{what}, first run:\n{}", report(&[difference])));
        }
        let reference = match &first[0].outcome {
            Outcome::Unpacked { tree, .. } => Ok(fingerprint(tree)),
            Outcome::Failed(line) | Outcome::Crashed(line) => Err(line.clone()),
        };
        // What else came, by mode and kind: how often, and the first example.
        let mut seen: BTreeMap<String, (usize, String)> = BTreeMap::new();
        let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
        for round in 1..repeats {
            let mut ways = vec![("no-store", None)];
            if side_by_side && round % 16 == 5 {
                ways.push(if round % 32 == 5 {
                    ("jobs-4", Some(4))
                } else {
                    ("jobs-2", Some(2))
                });
            }
            for (name, jobs) in ways {
                *runs.entry(name).or_default() += 1;
                let dest = fresh_dest(&env, Mode::NoStore);
                let store = env.path().join(format!("store-{round}"));
                let out = match jobs {
                    Some(jobs) => unpack_jobs(&env, &store, jobs, &image.path, &dest),
                    None => run_unpack(&env, Mode::NoStore, &[], image.path.as_os_str(), &dest),
                };
                let run = observe(name, out, &dest);
                if !run.debris.is_empty() {
                    failures.push(format!("{what}: {name} left {:?}", run.debris));
                }
                // Keep the scratch dir small.
                for made in [&dest, &store] {
                    if fs::symlink_metadata(made).is_ok() && fs::remove_dir_all(made).is_err() {
                        let _ = env.strata(args!["rmtree", made]);
                    }
                }
                let (kind, example) = match (&run.outcome, &reference) {
                    (Outcome::Unpacked { tree, .. }, Ok(reference)) => {
                        let print = fingerprint(tree);
                        if print == *reference {
                            continue;
                        }
                        let paths: BTreeSet<&String> =
                            print.keys().chain(reference.keys()).collect();
                        let lines: Vec<String> = paths
                            .into_iter()
                            .filter(|p| print.get(*p) != reference.get(*p))
                            .map(|p| {
                                let show = |node: Option<&String>| {
                                    node.map_or("(absent)", String::as_str).to_owned()
                                };
                                format!(
                                    "      {p}: first {} / now {}",
                                    show(reference.get(p)),
                                    show(print.get(p))
                                )
                            })
                            .collect();
                        let shown = lines.len().min(6);
                        (
                            "another tree".to_owned(),
                            format!(
                                "{} paths differ, e.g.\n{}",
                                lines.len(),
                                lines[..shown].join("\n")
                            ),
                        )
                    }
                    (Outcome::Unpacked { .. }, Err(line)) => (
                        "succeeded where the first run failed".to_owned(),
                        line.clone(),
                    ),
                    (Outcome::Failed(_), Err(_)) => continue,
                    (Outcome::Failed(line), Ok(_)) => ("failed".to_owned(), line.clone()),
                    (Outcome::Crashed(what), _) => ("crashed".to_owned(), what.clone()),
                };
                let entry = seen
                    .entry(format!("{name}: {kind}"))
                    .or_insert((0, example));
                entry.0 += 1;
            }
        }
        for (key, (count, example)) in seen {
            let mode = key.split(':').next().unwrap_or_default();
            failures.push(format!(
                "{what}: {key} in {count} of {} runs; the first:\n    {example}",
                runs.get(mode).copied().unwrap_or_default()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "race-prone layouts unpack differently between modes or runs:\n{}",
        failures.join("\n")
    );
}
