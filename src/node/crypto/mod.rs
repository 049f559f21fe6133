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
use crate::domain::ids::{Name, UnixMillis};
use crate::domain::key::{KeyRecord, WrappedKey};
use crate::error::AppResult;
use crate::signer::async_signer::AsyncSigner;
use crate::store::{CatalogStore, RecordStore, Store};
pub use operations::{MAX_BATCH, OpenItem, PublicKey, Rewrapped, SealItem};
pub use records::{MAX_PAGE as MAX_RECORD_PAGE, NewRecord, RecordDigest};

pub struct Crypto {
    /// For the change tokens the key cache follows.
    store: Arc<Store>,
    keys: CatalogStore,
    records: RecordStore,
    signer: AsyncSigner,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
    hot: KeyCache,
}

impl Crypto {
    pub fn new(ctx: &Context, catalog: Arc<Catalog>) -> Self {
        Crypto {
            store: Arc::clone(&ctx.store),
            keys: CatalogStore::new(&ctx.store),
            records: RecordStore::new(&ctx.store),
            signer: ctx.async_signer(),
            clock: Arc::clone(&ctx.clock),
            catalog,
            hot: KeyCache::default(),
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }
}

/// Keys read at a time while looking for a spec's current key.
const KEY_PAGE: usize = 256;

/// The spec's current key (the one that encrypts: Active or Renewed) and its
/// wrapped material, or None; read a page of the spec's keys at a time (one
/// read for a spec of up to `KEY_PAGE` keys).
pub(crate) async fn current_key(keys: &CatalogStore, spec: &Name) -> AppResult<Option<(KeyRecord, WrappedKey)>> {
    let mut after = None;
    loop {
        let page = keys.keys_page(spec.clone(), after, KEY_PAGE).await?;
        let more = page.len() >= KEY_PAGE;
        after = page.last().map(|(k, _)| k.id.clone());
        if let Some(found) = page.into_iter().find(|(k, _)| k.state.can_encrypt()) {
            return Ok(Some(found));
        }
        if !more {
            return Ok(None);
        }
    }
}
