//! The crypto service: encrypt, decrypt and rewrap with the instance's
//! keys (one at a time or in batches), sign/verify, MAC/verify, wrap/unwrap
//! (`operations.rs`), and the encrypted records (`records.rs`). Every call
//! runs in a `Session` (`session.rs`) that checks the spec's purpose and the
//! catalog's access policies and caches keys for the call; unwrapped keys
//! stay warm across calls in the service's `KeyCache`.

mod operations;
mod records;
mod session;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use super::cache::KeyCache;
use super::catalog::Catalog;
use super::context::Context;
use crate::clock::Clock;
use crate::domain::ids::UnixMillis;
use crate::signer::Signer;
use crate::store::Store;
pub use operations::{MAX_BATCH, OpenItem, PublicKey, Rewrapped, SealItem};
pub use records::{MAX_PAGE as MAX_RECORD_PAGE, NewRecord, RecordDigest};

pub struct Crypto {
    store: Arc<Store>,
    signer: Arc<dyn Signer>,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
    hot: KeyCache,
}

impl Crypto {
    pub fn new(ctx: &Context, catalog: Arc<Catalog>) -> Self {
        Crypto {
            store: Arc::clone(&ctx.store),
            signer: Arc::clone(&ctx.signer),
            clock: Arc::clone(&ctx.clock),
            catalog,
            hot: KeyCache::default(),
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }
}
