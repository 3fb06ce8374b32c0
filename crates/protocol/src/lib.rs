//! What `strata` (the unprivileged parent) and `strata-helper` (the sandboxed process that
//! touches layer contents) say to each other, and the types both sides need for it. The leaf
//! of the crate graph: it depends on neither side, and neither side on the other.
//!
//! The parent starts the helper program with one argument, a JSON [`Role`]: an inflater
//! ([`Role::Inflate`]), which turns a compressed layer on its stdin into the tar stream, or a
//! sandboxed job ([`Role::Job`]). For [`Op::Apply`] the tar stream arrives in a ring of shared
//! memory ([`RING_FD`]), from an inflater or straight from the blob. Each process answers with
//! exactly one JSON [`Reply`] line on the result pipe, which it finds as fd [`RESULT_FD`], and
//! exits 0 only when the reply is not an error. With subordinate ids, a one-byte handshake
//! comes first (see [`MAPS_WANTED`]).

#![deny(missing_docs)]

mod idmap;
mod messages;

pub use idmap::{IdMap, IdRange};
pub use messages::*;
