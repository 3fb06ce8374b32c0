//! Support shared by the integration tests: image fixtures, running the CLI as a non-root user,
//! and observing the trees it produces. `use common::*;` brings all of it.
//!
//! Every `tests/*.rs` compiles this module on its own and uses only part of it, hence the
//! `dead_code` and `unused_imports` allowances.

#[allow(dead_code)]
pub mod both;
#[allow(dead_code)]
pub mod fixture;
#[allow(dead_code)]
pub mod idmap;
#[allow(dead_code)]
pub mod proxy;
#[allow(dead_code)]
pub mod registry;
#[allow(dead_code)]
pub mod run;
#[allow(dead_code)]
pub mod store;
#[allow(dead_code)]
pub mod tree;

#[allow(unused_imports)]
pub use both::*;
#[allow(unused_imports)]
pub use fixture::*;
#[allow(unused_imports)]
pub use idmap::*;
#[allow(unused_imports)]
pub use proxy::*;
#[allow(unused_imports)]
pub use registry::*;
#[allow(unused_imports)]
pub use run::*;
#[allow(unused_imports)]
pub use store::*;
#[allow(unused_imports)]
pub use tree::*;

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `bytes`, the form digests and diff IDs take everywhere.
#[allow(dead_code)]
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
