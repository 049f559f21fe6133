//! Clone grants and One Time Clone, attacked from outside (issue 22, items 1
//! and 2): the "target" here is a certificate alone, no daemon behind it. It
//! pulls snapshots and opens requests through a peer link, and never answers
//! a delivery. Only the grant of one clone, used once, unexpired, on a source
//! whose own automatic-exchange property is true, for a target still
//! authorised, approves without a person.

use kmf::app::StartOptions;
use kmf::clock::{Clock, ManualClock, SystemClock};
use kmf::domain::bundle::WrappingAlgorithm;
use kmf::domain::clone::SnapshotPart;
use kmf::domain::exchange::{Frequency, RequestStatus};
use kmf::domain::ids::{Host, Name, RequestId, SysId};
use kmf::error::PeerError;
use kmf::node::ports::{OpenRequest, PeerLink};
use kmf::rpc::pb;
use kmf::rpc::pb::clones_client::ClonesClient;
use kmf::rpc::peer::PeerClient;
use kmf::store::{CloneStore, RequestStore};
use tokio_stream::StreamExt;

use crate::clone::admin_channel;
use crate::clone_exchange::set_auto;
use crate::support::{Ops, Pki, TestNode};

/// An instance certificate of the deployment and nothing else.
struct Rogue {
    sys_id: SysId,
    link: PeerClient,
    transport_key: Vec<u8>,
    opened: u8,
}

impl Rogue {
    fn new(pki: &Pki, n: u8) -> Rogue {
        let sys_id = SysId::parse(&hex::encode([n; 16])).expect("sys_id");
        let cert = kmf::tls::pki::issue_instance(&pki.ca, &sys_id, &["127.0.0.1".to_owned()]).expect("cert");
        let rsa = openssl::rsa::Rsa::generate(3072).expect("rsa");
        let transport_key = openssl::pkey::PKey::from_rsa(rsa).expect("pkey").public_key_to_der().expect("der");
        Rogue { link: PeerClient::new(sys_id.clone(), pki.files(&cert)), sys_id, transport_key, opened: 0 }
    }

    /// Pulls a whole snapshot; the grant id its end names.
    async fn pull(&self, source: &TestNode) -> Result<Option<String>, PeerError> {
        let expected = SysId::parse(&source.sys_id).expect("sys_id");
        let mut parts = self.link.stream_snapshot(&source.host, &expected).await?;
        let mut grant = None;
        while let Some(part) = parts.next().await {
            if let SnapshotPart::End { grant: g, .. } = part? {
                grant = g;
            }
        }
        Ok(grant)
    }

    /// Opens a new request on `source`; the status the source answers.
    async fn open(
        &mut self,
        source: &TestNode,
        clock: &dyn Clock,
        frequency: Frequency,
        specs: &[&str],
        grant: Option<&str>,
    ) -> (RequestId, RequestStatus) {
        self.opened += 1;
        let id = RequestId::from_random([self.opened; 16]);
        let open = OpenRequest {
            request_id: id.clone(),
            target_sys_id: self.sys_id.clone(),
            // Nobody listens there: deliveries are never answered.
            target_host: Host::parse("127.0.0.1:9").expect("host"),
            source_sys_id: SysId::parse(&source.sys_id).expect("sys_id"),
            spec_names: specs.iter().map(|s| Name::parse(s, "spec").expect("spec")).collect(),
            expires_at: clock.now().plus_millis(24 * 3_600_000),
            transport_public_key: self.transport_key.clone(),
            wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256,
            frequency,
            clone_grant: grant.map(str::to_owned),
        };
        let expected = SysId::parse(&source.sys_id).expect("sys_id");
        let view = self.link.open_request(&source.host, &expected, open).await.expect("opened");
        (id, view.status)
    }

    fn host(&self) -> String {
        "127.0.0.1:9".into()
    }
}

async fn register(source: &TestNode, pki: &Pki, rogue: &Rogue) {
    let mut clones = ClonesClient::new(admin_channel(source, pki).await);
    let add = pb::AddCloneTargetRequest { sys_id: rogue.sys_id.to_string(), host: rogue.host() };
    clones.add_clone_target(add).await.expect("register");
}

async fn grant_of(source: &TestNode, rogue: &Rogue) -> Option<kmf::domain::clone::CloneGrant> {
    let store = source.app.as_ref().expect("running").services.store();
    CloneStore::new(store).clone_grant(rogue.sys_id.clone()).await.expect("read")
}

fn approver(source: &TestNode, id: &RequestId) -> Option<String> {
    let store = source.app.as_ref().expect("running").services.store();
    let req =
        crate::support::wait_for(RequestStore::new(store).request(id.clone())).expect("read").expect("request").value;
    req.history.iter().find(|t| t.status == RequestStatus::Approved).map(|t| t.actor.clone())
}

/// Issue 22 item 1, "Seen": with the source's own property false a
/// registered target's AUTOMATIC request is not approved; a grant approves
/// one request only; a request naming no grant (a peer one release older)
/// waits for a person; removing the target deletes its grant at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_grant_needs_the_sources_own_property_approves_once_and_goes_with_its_target() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    src.spec("hr", "bonus", true).await;
    set_auto(&mut src, "false").await;
    let mut rogue = Rogue::new(&pki, 0xa1);
    register(&source, &pki, &rogue).await;
    let clock = SystemClock;

    let grant = rogue.pull(&source).await.expect("a registered target is served").expect("the end names a grant");
    let stored = grant_of(&source, &rogue).await.expect("the grant is stored before the end leaves");
    assert_eq!(stored.id, grant);
    assert_eq!(stored.expires_at.0 - stored.granted_at.0, 3_600_000, "1 h by default");
    let (id, status) = rogue.open(&source, &clock, Frequency::Automatic, &["pay", "bonus"], Some(&grant)).await;
    assert_eq!(status, RequestStatus::Pending, "the source's own property is false: no automatic approval");
    assert_eq!(approver(&source, &id), None);

    // With the property true the grant approves one AUTOMATIC request, and only one.
    set_auto(&mut src, "true").await;
    let (id, status) = rogue.open(&source, &clock, Frequency::Automatic, &["pay", "bonus"], Some(&grant)).await;
    assert_eq!(status, RequestStatus::Approved);
    assert_eq!(approver(&source, &id), Some(format!("system (clone grant {grant})")));
    let (id, status) = rogue.open(&source, &clock, Frequency::Automatic, &["pay"], Some(&grant)).await;
    assert_eq!((status, approver(&source, &id)), (RequestStatus::Pending, None), "the grant is used up");
    let (_, status) = rogue.open(&source, &clock, Frequency::Automatic, &["pay"], None).await;
    assert_eq!(status, RequestStatus::Pending, "no grant id (an older peer): left for a person");

    // A new snapshot, a new grant; the target is removed: the grant goes with it.
    let grant = rogue.pull(&source).await.expect("served").expect("grant");
    assert!(grant_of(&source, &rogue).await.is_some());
    let mut clones = ClonesClient::new(admin_channel(&source, &pki).await);
    clones.remove_clone_target(pb::RemoveCloneTargetRequest { sys_id: rogue.sys_id.to_string() }).await.expect("rm");
    assert_eq!(grant_of(&source, &rogue).await, None, "removing the target deletes its grant");
    let (id, status) = rogue.open(&source, &clock, Frequency::Automatic, &["pay", "bonus"], Some(&grant)).await;
    assert_eq!((status, approver(&source, &id)), (RequestStatus::Pending, None), "removed: not approved");
    // Exactly one request was approved, by the system, in all of this.
    let approvals = src.audit_entries("exchange.approve").await;
    assert_eq!(approvals.len(), 1, "{approvals:?}");
}

/// Item 1: a grant approves for a stated time after its snapshot (1 h by
/// default); a request after that waits for a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_grant_expires_an_hour_after_its_snapshot() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let options = StartOptions { clock: clock.clone(), ..Default::default() };
    let source = TestNode::start_opts(&pki, None, None, options).await;
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    let mut rogue = Rogue::new(&pki, 0xb2);
    register(&source, &pki, &rogue).await;
    let grant = rogue.pull(&source).await.expect("served").expect("grant");
    clock.advance_millis(3_600_000);
    let (id, status) = rogue.open(&source, clock.as_ref(), Frequency::Automatic, &["pay"], Some(&grant)).await;
    assert_eq!((status, approver(&source, &id)), (RequestStatus::Pending, None), "expired an hour after the snapshot");
    // A fresh snapshot approves again (the clock did not break anything else).
    let grant = rogue.pull(&source).await.expect("served").expect("grant");
    clock.advance_millis(3_599_000);
    let (_, status) = rogue.open(&source, clock.as_ref(), Frequency::Automatic, &["pay"], Some(&grant)).await;
    assert_eq!(status, RequestStatus::Approved, "within the hour");
}

/// Items 1 and 2: a target authorised by a One Time configuration alone gets
/// only the configuration's specs; the configuration approves exactly one
/// request although the target never answers the delivery (used up by the
/// approval); used up, it no longer lets the target clone. Deleting a
/// configuration deletes its target's grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_configuration_approves_once_only_its_specs_and_then_authorises_nothing() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    src.spec("hr", "bonus", true).await;
    let mut rogue = Rogue::new(&pki, 0xc3);
    let clock = SystemClock;
    let (rogue_id, rogue_host) = (rogue.sys_id.to_string(), rogue.host());
    let configure = |src: &mut Ops| {
        let req = pb::CreateCloneExchangeRequest {
            frequency: pb::Frequency::OneTimeClone as i32,
            target_sys_id: rogue_id.clone(),
            target_host: rogue_host.clone(),
            spec_names: vec!["pay".into()],
            rekey_after_import: false,
        };
        let mut exchange = src.exchange.clone();
        async move { exchange.create_clone_exchange(req).await.expect("configure") }
    };

    // Deleting the configuration deletes the grant of its clone.
    configure(&mut src).await;
    let grant = rogue.pull(&source).await.expect("a configuration authorises").expect("grant");
    let del = pb::DeleteCloneExchangeRequest { target_sys_id: rogue.sys_id.to_string() };
    src.exchange.delete_clone_exchange(del).await.expect("delete");
    assert_eq!(grant_of(&source, &rogue).await, None, "deleting the configuration deletes its grant");
    let (_, status) = rogue.open(&source, &clock, Frequency::OneTimeClone, &["pay"], Some(&grant)).await;
    assert_eq!(status, RequestStatus::Pending);

    configure(&mut src).await;
    // Listed as a clone target, marked as authorised by its configuration.
    let mut clones = ClonesClient::new(admin_channel(&source, &pki).await);
    let listed = clones.list_clone_targets(pb::ListCloneTargetsRequest {}).await.expect("list").into_inner().targets;
    let mine: Vec<_> = listed.iter().map(|t| (t.sys_id.clone(), t.authorised_by.clone())).collect();
    assert_eq!(mine, [(rogue.sys_id.to_string(), "configuration".to_owned())], "{listed:?}");
    let grant = rogue.pull(&source).await.expect("served").expect("grant");
    assert_eq!(grant_of(&source, &rogue).await.expect("grant").specs, [Name::parse("pay", "spec").expect("name")]);
    // Only the configuration's specs: an AUTOMATIC request for another one waits.
    let (id, status) = rogue.open(&source, &clock, Frequency::Automatic, &["bonus"], Some(&grant)).await;
    assert_eq!((status, approver(&source, &id)), (RequestStatus::Pending, None), "bonus is not configured");
    // The One Time request is approved by its policy, once; the target never answers.
    let (first, status) = rogue.open(&source, &clock, Frequency::OneTimeClone, &["pay"], Some(&grant)).await;
    assert_eq!(status, RequestStatus::Approved);
    assert!(approver(&source, &first).is_some_and(|a| a.starts_with("system (policy ")));
    let used = src.exchange.list_clone_exchanges(pb::ListCloneExchangesRequest {}).await.expect("list");
    let used = used.into_inner().clone_exchanges;
    assert_eq!(used[0].used_by_request_id, first.to_string(), "used up by the approval, not the receipt");
    for _ in 0..2 {
        let (id, status) = rogue.open(&source, &clock, Frequency::OneTimeClone, &["pay"], Some(&grant)).await;
        assert_eq!((status, approver(&source, &id)), (RequestStatus::Pending, None), "One Time is one time");
    }
    assert_eq!(src.audit_entries("exchange.approve").await.len(), 1);
    let listed = clones.list_clone_targets(pb::ListCloneTargetsRequest {}).await.expect("list").into_inner().targets;
    assert!(listed.is_empty(), "a used configuration authorises nothing: {listed:?}");
    // Used up, the configuration no longer lets its target clone.
    match rogue.pull(&source).await {
        Err(PeerError::Refused(e)) => assert!(e.to_string().contains("used up"), "{e}"),
        other => panic!("a used One Time configuration must not authorise a clone: {other:?}"),
    }
}
