//! ERROR_ON_LOCAL_INSTANCE: when the target's own KEK refuses to wrap the
//! keys it receives, nothing is imported, the target says why, the source
//! shows ERROR_ON_REMOTE_INSTANCE, and a RETRY once the KEK works imports
//! every key once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kmf::app::StartOptions;
use kmf::domain::bundle::WrappingAlgorithm;
use kmf::domain::key::{DataKey, WrappedKey};
use kmf::rpc::pb;
use kmf::signer::{CryptoError, Signer, TransportKey};

use crate::support::{Pki, TestNode, status};

/// A signer whose `wrap` fails while `refuse` is set (a KEK that stopped
/// working); everything else is the signer inside.
struct RefusingKek {
    inner: Arc<dyn Signer>,
    refuse: Arc<AtomicBool>,
}

impl std::fmt::Debug for RefusingKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusingKek").field("inner", &self.inner.kind()).finish()
    }
}

impl Signer for RefusingKek {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(CryptoError::Token("the KEK refused to wrap (test)".into()));
        }
        self.inner.wrap(key)
    }
    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        self.inner.unwrap(wrapped)
    }
    fn create_transport_key(&self) -> Result<TransportKey, CryptoError> {
        self.inner.create_transport_key()
    }
    fn open_transport_key(&self, h: &[u8], w: WrappingAlgorithm, k: &[u8]) -> Result<DataKey, CryptoError> {
        self.inner.open_transport_key(h, w, k)
    }
    fn destroy_transport_key(&self, handle: &[u8]) -> Result<(), CryptoError> {
        self.inner.destroy_transport_key(handle)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kek_that_refuses_to_wrap_is_an_error_on_the_local_instance_and_retry_imports_once() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let refuse = Arc::new(AtomicBool::new(false));
    let flag = refuse.clone();
    let options = StartOptions {
        wrap_signer: Box::new(move |inner| Arc::new(RefusingKek { inner, refuse: flag })),
        ..Default::default()
    };
    let target = TestNode::start_opts(&pki, None, None, options).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("hr", "salary", true).await;
    t.spec("hr", "salary", false).await;

    let created = t.create_request(&source, &["salary"]).await.expect("create");
    refuse.store(true, Ordering::SeqCst);
    let _ = s.decide(&created.request_id, pb::Decision::Approve, "").await.expect("approve");
    let on_target = t
        .wait_for(&created.request_id, "ERROR_ON_LOCAL_INSTANCE", |r| {
            status(r) == pb::RequestStatus::ErrorOnLocalInstance
        })
        .await;
    let why = on_target.history.last().map(|h| h.note.clone()).unwrap_or_default();
    assert!(why.contains("KEK could not wrap"), "the target says why: {:?}", on_target.history);
    assert!(t.keys_of("salary").await.is_empty(), "nothing was imported");
    s.wait_for(&created.request_id, "ERROR_ON_REMOTE_INSTANCE", |r| {
        status(r) == pb::RequestStatus::ErrorOnRemoteInstance
    })
    .await;

    // The KEK works again: a RETRY on the source redelivers; every key once.
    refuse.store(false, Ordering::SeqCst);
    let retried = s.decide(&created.request_id, pb::Decision::Retry, "").await.expect("retry");
    if status(&retried) == pb::RequestStatus::RequestPending {
        // The refused bundle was dropped: the retry asks for the approval again.
        s.decide(&created.request_id, pb::Decision::Approve, "").await.expect("approve again");
    }
    let done = t.wait_for(&created.request_id, "COMPLETED", |r| status(r) == pb::RequestStatus::RequestCompleted).await;
    assert_eq!(done.imported_key_count, 1);
    assert_eq!(t.keys_of("salary").await.len(), 1);
    s.wait_for(&created.request_id, "COMPLETED on the source", |r| status(r) == pb::RequestStatus::RequestCompleted)
        .await;
}
