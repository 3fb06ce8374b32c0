//! What the tests share: the Go oracle, strata-tar's view in the oracle's form, and the
//! generated corpus.
#![allow(dead_code)] // Each test crate uses its own part.

pub mod corpus;
pub mod oracle;
pub mod view;
