//! The peer client: implements `node::ports::PeerLink` over the KeyExchange
//! service, checking each peer's certificate names the sys_id we expect.
//!
//! Channels are kept per (host, expected sys_id), so calls to a peer share one
//! TCP+TLS connection instead of a handshake each. A tonic channel redials by
//! itself with the same rustls config (the sys_id check holds on every
//! connection); a channel whose call fails at the transport (unreachable,
//! connection lost, timed out) is dropped all the same, so the next call dials
//! afresh: that call also sees a peer restarted with a new certificate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::domain::DomainError;
use crate::domain::clone::SnapshotPart;
use crate::domain::exchange::{RequestStatus, SignedBlob};
use crate::domain::ids::{Host, RequestId, SysId};
use crate::error::PeerError;
use crate::node::ports::{OpenRequest, PeerFuture, PeerLink, PeerStream, SourceView};
use crate::rpc::client::{CALL_TIMEOUT, DialError, connect_with_timeout};
use crate::rpc::convert_clone::snapshot_part_from;
use crate::rpc::pb::clone_source_client::CloneSourceClient;
use crate::rpc::pb::key_exchange_client::KeyExchangeClient;
use crate::rpc::{MAX_MESSAGE_BYTES, convert, pb, status::peer_error};
use crate::tls::TlsFiles;
use tokio_stream::StreamExt;

type PeerKey = (Host, SysId);
type Client = KeyExchangeClient<Channel>;

pub struct PeerClient {
    own: SysId,
    /// This instance's identity; `set_identity` swaps it (a reload).
    files: std::sync::RwLock<TlsFiles>,
    call_timeout: Duration,
    /// One channel per peer, with the id it was cached under (so a failed
    /// call drops its own channel, never a newer one another task dialled).
    channels: Mutex<HashMap<PeerKey, (u64, Channel)>>,
    next_id: AtomicU64,
}

impl PeerClient {
    /// `own` is this instance's sys_id; `files` its instance identity. Calls
    /// are bounded by `CALL_TIMEOUT`.
    pub fn new(own: SysId, files: TlsFiles) -> Self {
        PeerClient {
            own,
            files: std::sync::RwLock::new(files),
            call_timeout: CALL_TIMEOUT,
            channels: Mutex::default(),
            next_id: AtomicU64::new(0),
        }
    }

    /// Dials with `files` from now on (a renewed certificate, a new CRL):
    /// cached channels are dropped, calls in flight finish on theirs.
    pub fn set_identity(&self, files: TlsFiles) {
        *self.files.write().unwrap_or_else(|p| p.into_inner()) = files;
        self.lock().clear();
    }

    /// Bounds every call by `timeout` instead of `CALL_TIMEOUT` (and a dial
    /// by the shorter of it and `CONNECT_TIMEOUT`).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The cached channel to `host`, or a new one (dialled outside the lock;
    /// when two tasks race, the first one cached is kept).
    async fn channel(&self, host: &Host, expected: &SysId) -> Result<(u64, Channel), PeerError> {
        let key = (host.clone(), expected.clone());
        if let Some(cached) = self.lock().get(&key) {
            return Ok(cached.clone());
        }
        let files = self.files.read().unwrap_or_else(|p| p.into_inner()).clone();
        let channel = connect_with_timeout(host, &files, Some(expected.clone()), self.call_timeout)
            .await
            .map_err(|e| dial_error(host, expected, e))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(self.lock().entry(key).or_insert((id, channel)).clone())
    }

    /// Drops the channel cached as `id` for (host, expected), if still there.
    fn forget(&self, host: &Host, expected: &SysId, id: u64) {
        let key = (host.clone(), expected.clone());
        let mut channels = self.lock();
        if channels.get(&key).is_some_and(|(cached, _)| *cached == id) {
            channels.remove(&key);
            tracing::debug!(peer = %host, "peer channel dropped after a transport failure");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, (u64, Channel)>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one KeyExchange call on the peer's channel.
    async fn call<T, F, Fut>(&self, host: &Host, expected: &SysId, call: F) -> Result<T, PeerError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = |channel| {
            KeyExchangeClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
        self.call_on(host, expected, client, call).await
    }

    /// Runs one call (or opens one stream) with a client of any service on
    /// the peer's channel; a transport failure drops the channel.
    async fn call_on<C, T, F, Fut>(
        &self,
        host: &Host,
        expected: &SysId,
        client: impl FnOnce(Channel) -> C,
        call: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(C) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (id, channel) = self.channel(host, expected).await?;
        let outcome = tokio::time::timeout(self.call_timeout, call(client(channel))).await;
        match outcome {
            Ok(Ok(answer)) => Ok(answer.into_inner()),
            Ok(Err(status)) => {
                if transport_failure(&status) {
                    self.forget(host, expected, id);
                    if crate::tls::wrong_instance_in(&status).is_some() {
                        // The channel redialled and met another instance.
                        return Err(wrong_instance(host, expected));
                    }
                }
                Err(peer_error(&host.to_string(), &status))
            }
            Err(_) => {
                self.forget(host, expected, id);
                let reason = format!("no answer within {:?}", self.call_timeout);
                Err(PeerError::Unreachable { host: host.to_string(), reason })
            }
        }
    }
}

/// A status that says the channel, not the peer's service, failed: tonic
/// makes these from transport errors (connection refused or lost, TLS,
/// timeout) and keeps the error as the status's source. UNAVAILABLE and a
/// timed-out call count too: a call that timed out may sit on a half-open
/// connection, and redialling costs one handshake.
fn transport_failure(status: &Status) -> bool {
    use std::error::Error;
    matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded) || status.source().is_some()
}

fn wrong_instance(host: &Host, expected: &SysId) -> PeerError {
    PeerError::Refused(DomainError::PermissionDenied(format!("the daemon at {host} is not instance {expected}")))
}

pub(crate) fn dial_error(host: &Host, expected: &SysId, e: DialError) -> PeerError {
    match e {
        // A server answered, but it is not the instance we asked for.
        DialError::WrongInstance(_) => wrong_instance(host, expected),
        DialError::Failed(reason) => PeerError::Unreachable { host: host.to_string(), reason },
    }
}

impl PeerLink for PeerClient {
    fn open_request<'a>(&'a self, host: &'a Host, expected: &'a SysId, r: OpenRequest) -> PeerFuture<'a, SourceView> {
        Box::pin(async move {
            let msg = pb::OpenRequestRequest {
                request_id: r.request_id.to_string(),
                target_sys_id: r.target_sys_id.to_string(),
                target_host: r.target_host.to_string(),
                source_sys_id: r.source_sys_id.to_string(),
                spec_names: r.spec_names.iter().map(|s| s.to_string()).collect(),
                expires_at: Some(convert::ts(r.expires_at)),
                transport_public_key: r.transport_public_key,
                wrapping_algorithm: convert::wrapping(r.wrapping) as i32,
                frequency: convert::frequency(r.frequency) as i32,
                clone_grant_id: r.clone_grant.unwrap_or_default(),
            };
            let answer = self.call(host, expected, |mut c| async move { c.open_request(msg).await }).await?;
            let bad = |what: &str| PeerError::Refused(DomainError::malformed("peer answer", what));
            let req = answer.request.ok_or_else(|| bad("no request"))?;
            let status = convert::status_from(req.status).ok().flatten().ok_or_else(|| bad("no status"))?;
            let lines =
                req.lines.iter().map(convert::line_from).collect::<Result<_, _>>().map_err(PeerError::Refused)?;
            Ok(SourceView { status, lines, total_key_count: req.total_key_count })
        })
    }

    fn deliver_bundle<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        bundle: SignedBlob,
    ) -> PeerFuture<'a, SignedBlob> {
        Box::pin(async move {
            let msg = pb::DeliverBundleRequest { bundle: bundle.bytes, signature: bundle.signature };
            let answer = self.call(host, expected, |mut c| async move { c.deliver_bundle(msg).await }).await?;
            Ok(SignedBlob { bytes: answer.receipt, signature: answer.signature })
        })
    }

    fn notify_status<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        request_id: RequestId,
        status: RequestStatus,
        reason: String,
    ) -> PeerFuture<'a, ()> {
        Box::pin(async move {
            let msg = pb::NotifyStatusRequest {
                request_id: request_id.to_string(),
                source_sys_id: self.own.to_string(),
                status: convert::status(status) as i32,
                reason,
            };
            self.call(host, expected, |mut c| async move { c.notify_status(msg).await }).await?;
            Ok(())
        })
    }

    fn stream_snapshot<'a>(&'a self, host: &'a Host, expected: &'a SysId) -> PeerFuture<'a, PeerStream<SnapshotPart>> {
        Box::pin(async move {
            let client = |channel| CloneSourceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
            let open = |mut c: CloneSourceClient<Channel>| async move {
                c.stream_snapshot(pb::StreamSnapshotRequest {}).await
            };
            let parts = self.call_on(host, expected, client, open).await?;
            let (peer, idle) = (host.to_string(), self.call_timeout);
            let stream = parts.timeout(idle).map(move |item| match item {
                Ok(Ok(part)) => snapshot_part_from(&part).map_err(PeerError::Refused),
                Ok(Err(status)) => Err(peer_error(&peer, &status)),
                Err(_) => Err(PeerError::Unreachable {
                    host: peer.clone(),
                    reason: format!("no snapshot part within {idle:?}"),
                }),
            });
            Ok(Box::pin(stream) as PeerStream<SnapshotPart>)
        })
    }
}
