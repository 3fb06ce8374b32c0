//! What `strata` (the unprivileged parent) and `strata-helper` (the sandboxed process that
//! touches layer contents) say to each other, and the types both sides need for it. The leaf
//! of the crate graph: it depends on neither side, and neither side on the other.
//!
//! The parent starts the helper with one argument, a JSON [`Request`]. For [`Op::Apply`] the
//! compressed layer arrives on stdin. The helper answers with exactly one JSON [`Reply`] line on
//! the result pipe, which it finds as fd [`RESULT_FD`], and exits 0 only when the reply is not an
//! error. With subordinate ids, a one-byte handshake comes first (see [`MAPS_WANTED`]).

#![deny(missing_docs)]

mod digest;
mod idmap;
mod messages;

pub use digest::{Digest, Hasher, InvalidDigest};
pub use idmap::{IdMap, IdRange};
pub use messages::*;
