//! Exact gRPC codes for inputs that are wrong before any use case runs,
//! through the wire: hosts that cannot be dialled (port 0), enums left
//! UNSPECIFIED, bytes that do not decode as the request message, a message
//! over the size limit. Nothing is stored and no peer is dialled.

use kmf::rpc::pb;
use prost::bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::support::{Ops, Pki, TestNode};

/// Sends raw bytes as the request message and returns the raw reply.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.expect_err("a bad message is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_with_small_calls_refuse_large_messages_before_decoding() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let channel = node.channel(&pki.operator("admin", &[kmf::domain::auth::Role::Admin])).await;
    let over = kmf::app::SMALL_MESSAGE_BYTES + 1;
    for path in [
        "/kmf.v1.KeyManagement/ImportKey",
        "/kmf.v1.Properties/SetProperty",
        "/kmf.v1.ResourceExchange/CreateRequest",
        "/kmf.v1.Policies/CreatePolicy",
        "/kmf.v1.Clones/AddCloneTarget",
        "/kmf.v1.Rekeys/ListRekeys",
        "/kmf.v1.Audit/ListAuditEntries",
        "/kmf.v1.Instance/Info",
    ] {
        let err = raw_call(channel.clone(), path, vec![0; over]).await;
        assert_eq!(err.code(), Code::ResourceExhausted, "{path}: {err:?}");
        assert!(err.message().contains("message length too large"), "{path}: {err:?}");
    }
    // A peer's KeyExchange takes a 10,000-key bundle: 1 MiB is far under its limit.
    let peer = node.channel(&node.instance_files).await;
    let err = raw_call(peer, "/kmf.v1.KeyExchange/DeliverBundle", vec![0; over]).await;
    assert_eq!(err.code(), Code::InvalidArgument, "decoded (and refused as garbage), not over the limit: {err:?}");
}

async fn requests(ops: &mut Ops) -> usize {
    ops.exchange.list_requests(pb::ListRequestsRequest::default()).await.expect("list").into_inner().requests.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_exact_codes_and_change_nothing() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    source.admin(&pki).await.spec("m", "salary", true).await;
    let mut t = target.admin(&pki).await;
    t.spec("m", "salary", false).await;
    let admin = pki.operator("admin", &[kmf::domain::auth::Role::Admin]);
    let channel = target.channel(&admin).await;
    let mut clones = pb::clones_client::ClonesClient::new(channel.clone());
    let port0 = format!("{}:0", source.host.name());
    let handshakes_before = source.running().handshakes_accepted();

    let ask = pb::CreateRequestRequest {
        source_sys_id: source.sys_id.clone(),
        source_host: source.host.to_string(),
        spec_names: vec!["salary".into()],
        expires_in: None,
        frequency: pb::Frequency::Adhoc as i32,
        rekey_after_import: false,
    };
    let cases: Vec<(&str, pb::CreateRequestRequest, &str)> = vec![
        ("port 0", pb::CreateRequestRequest { source_host: port0.clone(), ..ask.clone() }, "source_host"),
        ("frequency unspecified", pb::CreateRequestRequest { frequency: 0, ..ask.clone() }, "frequency"),
        ("frequency unknown", pb::CreateRequestRequest { frequency: 99, ..ask.clone() }, "frequency"),
    ];
    for (what, req, field) in cases {
        let err = t.exchange.create_request(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().starts_with(&format!("invalid {field}: ")), "{what}: {}", err.message());
    }
    let err = clones
        .add_clone_target(pb::AddCloneTargetRequest { sys_id: source.sys_id.clone(), host: port0.clone() })
        .await
        .expect_err("clone target on port 0");
    assert_eq!(
        (err.code(), err.message().starts_with("invalid host: port 0")),
        (Code::InvalidArgument, true),
        "{err:?}"
    );
    let err = clones
        .start_clone(pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: port0.clone() })
        .await
        .expect_err("clone from port 0");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("invalid source_host: port 0"), "{}", err.message());

    // Bytes that are not the request message: field 1 claims 100 bytes it does not have.
    let err = raw_call(channel.clone(), "/kmf.v1.ResourceExchange/CreateRequest", vec![0x0a, 100, 1, 2]).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("failed to decode Protobuf message"), "{}", err.message());
    let err = raw_call(channel.clone(), "/kmf.v1.Properties/SetProperty", vec![0xff; 7]).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Over the limit (Properties takes 1 MiB, Crypto the daemon's 16 MiB).
    let err = raw_call(channel.clone(), "/kmf.v1.Properties/SetProperty", vec![0; 5 << 20]).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let err = raw_call(channel.clone(), "/kmf.v1.Crypto/Encrypt", vec![0; kmf::rpc::MAX_MESSAGE_BYTES + 1]).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Nothing stored, nothing dialled.
    assert_eq!(requests(&mut t).await, 0);
    let listed = clones.list_clones(pb::ListClonesRequest::default()).await.expect("clones").into_inner();
    assert!(listed.clones.is_empty(), "{listed:?}");
    let targets = clones.list_clone_targets(pb::ListCloneTargetsRequest::default()).await.expect("targets");
    assert!(targets.into_inner().targets.is_empty());
    assert_eq!(source.running().handshakes_accepted(), handshakes_before, "the source was not dialled");

    // And the well-formed request still works after all that (the source is dialled now).
    let made = t.exchange.create_request(ask).await.expect("a good request").into_inner();
    assert_eq!(made.request.map(|r| r.status), Some(pb::RequestStatus::RequestPending as i32));
}
