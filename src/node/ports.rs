//! What the services need from the outside world besides store and signer:
//! a link to peer daemons (implemented by `rpc::peer`) and the TLS
//! configuration in use (implemented by `rpc::probe`).

use std::future::Future;
use std::pin::Pin;

use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::clone::SnapshotPart;
use crate::domain::exchange::{RequestStatus, SignedBlob, SpecLine};
use crate::domain::health::CrlFacts;
use crate::domain::ids::{Host, Name, RequestId, SysId, UnixMillis};
use crate::error::PeerError;

pub type PeerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PeerError>> + Send + 'a>>;

/// A server stream from a peer; it ends after its last item or at the
/// first error.
pub type PeerStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, PeerError>> + Send>>;

/// The target's request, as sent to the source.
#[derive(Clone, Debug)]
pub struct OpenRequest {
    pub request_id: RequestId,
    pub target_sys_id: SysId,
    pub target_host: Host,
    pub source_sys_id: SysId,
    pub spec_names: Vec<Name>,
    pub expires_at: UnixMillis,
    pub transport_public_key: Vec<u8>,
    pub wrapping: WrappingAlgorithm,
    pub frequency: crate::domain::exchange::Frequency,
    /// The clone grant a request after a clone echoes (None: not after a
    /// clone, or a peer of an earlier release).
    pub clone_grant: Option<String>,
}

/// The source's answer to `OpenRequest`.
#[derive(Clone, Debug)]
pub struct SourceView {
    pub status: RequestStatus,
    pub lines: Vec<SpecLine>,
    pub total_key_count: u32,
}

/// Outbound calls to other instances. Each call checks that the peer's
/// certificate names `expected`.
pub trait PeerLink: Send + Sync + 'static {
    fn open_request<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        request: OpenRequest,
    ) -> PeerFuture<'a, SourceView>;
    fn deliver_bundle<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        bundle: SignedBlob,
    ) -> PeerFuture<'a, SignedBlob>;
    fn notify_status<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        request_id: RequestId,
        status: RequestStatus,
        reason: String,
    ) -> PeerFuture<'a, ()>;
    /// Opens the snapshot stream of a clone from the source at `host`
    /// (CloneSource.StreamSnapshot). Each part must arrive within the call
    /// timeout; the stream is checked part by part by the caller.
    fn stream_snapshot<'a>(&'a self, host: &'a Host, expected: &'a SysId) -> PeerFuture<'a, PeerStream<SnapshotPart>>;
}

/// The daemon's TLS configuration of the moment (implemented in
/// `rpc::probe` over `tls::live::LiveTls`; a reload changes what it answers).
pub trait TlsNow: Send + Sync + 'static {
    /// The instance's own certificate (DER) in use.
    fn certificate_der(&self) -> Vec<u8>;
    /// The CRL in use, if one is configured.
    fn crl(&self) -> Option<CrlFacts>;
    /// Why a call by the client that presented `cert_der` at its handshake
    /// must be refused at `now`: the CRL in use lists it, or the CRL is past
    /// its nextUpdate and enforced.
    fn refusal(&self, cert_der: &[u8], now: UnixMillis) -> Option<String>;
}
