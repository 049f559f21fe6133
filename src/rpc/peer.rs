//! The peer client: implements the node's `PeerLink` over the KeyExchange
//! service, checking each peer's certificate names the sys_id we expect.

use crate::domain::exchange::{RequestStatus, SignedBlob};
use crate::domain::ids::{Host, RequestId, SysId};
use crate::error::PeerError;
use crate::node::ports::{OpenRequest, PeerFuture, PeerLink, SourceView};
use crate::rpc::client::connect;
use crate::rpc::pb::key_exchange_client::KeyExchangeClient;
use crate::rpc::{MAX_MESSAGE_BYTES, convert, pb, status::peer_error};
use crate::tls::TlsFiles;

pub struct PeerClient {
    own: SysId,
    files: TlsFiles,
}

impl PeerClient {
    /// `own` is this instance's sys_id; `files` its instance identity.
    pub fn new(own: SysId, files: TlsFiles) -> Self {
        PeerClient { own, files }
    }

    async fn client(
        &self,
        host: &Host,
        expected: &SysId,
    ) -> Result<KeyExchangeClient<tonic::transport::Channel>, PeerError> {
        let channel = connect(host, &self.files, Some(expected.clone())).await.map_err(|reason| {
            if reason.contains("does not name instance") {
                // A server answered, but it is not the instance we asked for.
                PeerError::Refused(crate::domain::DomainError::PermissionDenied(format!(
                    "the daemon at {host} is not instance {expected}"
                )))
            } else {
                PeerError::Unreachable { host: host.to_string(), reason }
            }
        })?;
        Ok(KeyExchangeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

impl PeerLink for PeerClient {
    fn open_request<'a>(&'a self, host: &'a Host, expected: &'a SysId, r: OpenRequest) -> PeerFuture<'a, SourceView> {
        Box::pin(async move {
            let mut client = self.client(host, expected).await?;
            let msg = pb::OpenRequestRequest {
                request_id: r.request_id.to_string(),
                target_sys_id: r.target_sys_id.to_string(),
                target_host: r.target_host.to_string(),
                source_sys_id: r.source_sys_id.to_string(),
                spec_names: r.spec_names.iter().map(|s| s.to_string()).collect(),
                expires_at: Some(convert::ts(r.expires_at)),
                transport_public_key: r.transport_public_key,
                wrapping_algorithm: convert::wrapping(r.wrapping) as i32,
            };
            let answer = client.open_request(msg).await.map_err(|s| peer_error(&host.to_string(), &s))?.into_inner();
            let bad = |what: &str| PeerError::Refused(crate::domain::DomainError::malformed("peer answer", what));
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
            let mut client = self.client(host, expected).await?;
            let msg = pb::DeliverBundleRequest { bundle: bundle.bytes, signature: bundle.signature };
            let answer = client.deliver_bundle(msg).await.map_err(|s| peer_error(&host.to_string(), &s))?.into_inner();
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
            let mut client = self.client(host, expected).await?;
            let msg = pb::NotifyStatusRequest {
                request_id: request_id.to_string(),
                source_sys_id: self.own.to_string(),
                status: convert::status(status) as i32,
                reason,
            };
            client.notify_status(msg).await.map_err(|s| peer_error(&host.to_string(), &s))?;
            Ok(())
        })
    }
}
