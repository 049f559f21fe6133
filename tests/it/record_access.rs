//! Records obey the module access policies of the key they are under: a
//! caller refused `decrypt` on a record's module cannot overwrite it (under
//! another module's key) or delete it; record writes and deletes are audited,
//! one entry per call.

use kmf::domain::auth::Role;
use kmf::rpc::pb::{self, Operation, PolicyResult, PolicyType};
use tonic::Code;

use crate::support::{Ops, Pki, TestNode};

fn addr(id: &str) -> Option<pb::RecordAddress> {
    Some(pb::RecordAddress { table: "hr".into(), field: "pay".into(), record_id: id.into() })
}

fn put(id: &str, spec: &str, plaintext: &[u8]) -> pb::PutRecordRequest {
    pb::PutRecordRequest { address: addr(id), spec: spec.into(), plaintext: plaintext.to_vec() }
}

async fn get(ops: &mut Ops, id: &str) -> Result<(Vec<u8>, String), tonic::Status> {
    let r = ops.crypto.get_record(pb::GetRecordRequest { address: addr(id) }).await?.into_inner();
    Ok((r.plaintext, r.record.expect("record").key_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_refused_decrypt_cannot_replace_or_delete_a_record() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut admin = node.admin(&pki).await;
    admin.spec("hr", "pay", true).await;
    admin.spec("fin", "ledger", true).await;
    // "app" may encrypt anywhere (AutoGen Track of its role) but not decrypt in "hr".
    let strict = pb::AccessPolicy {
        name: "no-hr-reads".into(),
        module: "hr".into(),
        r#type: PolicyType::Script as i32,
        result: PolicyResult::StrictReject as i32,
        script: "app".into(),
        operations: vec![Operation::OpDecrypt as i32],
        ..Default::default()
    };
    admin.policies.create_policy(pb::CreatePolicyRequest { policy: Some(strict) }).await.expect("policy");
    let mut app = Ops::new(node.channel(&pki.operator("app", &[Role::CryptographicOperator])).await);

    admin.crypto.put_record(put("1", "pay", b"5000")).await.expect("admin writes hr/pay/1");
    let (_, hr_key) = get(&mut admin, "1").await.expect("get");
    assert!(hr_key.contains(":pay:"), "{hr_key}");

    // Overwriting under another module's key, alone or in a batch, and deleting: refused.
    let err = app.crypto.put_record(put("1", "ledger", b"1")).await.expect_err("app overwrote hr/pay/1");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("decrypt on pay"), "{err}");
    let batch = pb::PutRecordsRequest { records: vec![put("new", "ledger", b"2"), put("1", "ledger", b"3")] };
    let err = app.crypto.put_records(batch).await.expect_err("app overwrote hr/pay/1 in a batch");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("records[1]"), "the refused record is named: {err}");
    let err = app.crypto.delete_record(pb::DeleteRecordRequest { address: addr("1") }).await.expect_err("deleted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(get(&mut admin, "1").await.expect("still there"), (b"5000".to_vec(), hr_key.clone()), "untouched");
    assert_eq!(get(&mut admin, "new").await.expect_err("all or nothing").code(), Code::NotFound);
    let denied = admin.audit_entries("policy.denied").await;
    assert!(denied.iter().any(|e| e.actor == "operator:app" && e.subject == "pay"), "audited: {denied:?}");
    assert!(admin.audit_entries("record.delete").await.is_empty());

    // A new record (nothing replaced) needs only encrypt; the caller who may read may replace.
    app.crypto.put_record(put("2", "ledger", b"7")).await.expect("a new record");
    admin.crypto.put_record(put("1", "ledger", b"6000")).await.expect("admin replaces");
    let (plaintext, key) = get(&mut admin, "1").await.expect("get");
    assert_eq!(plaintext, b"6000");
    assert!(key.contains(":ledger:"), "{key}");

    // Audit: one entry per call, addresses and key ids, never plaintext.
    let puts = admin.audit_entries("record.put").await;
    assert_eq!(puts.len(), 3, "{puts:?}");
    assert_eq!((puts[0].actor.as_str(), puts[0].subject.as_str()), ("operator:admin", "hr/pay/1"));
    assert!(puts[0].details.contains(&hr_key) && !puts[0].details.contains("replaced"), "{:?}", puts[0]);
    assert_eq!((puts[1].actor.as_str(), puts[1].subject.as_str()), ("operator:app", "hr/pay/2"));
    assert!(puts[2].details.contains(&format!("1 replaced, under {hr_key}")), "{:?}", puts[2]);
    assert!(puts.iter().all(|e| !e.details.contains("6000") && !e.details.contains("5000")), "{puts:?}");

    // 1,000 records in one call: one entry with the count.
    let many = pb::PutRecordsRequest { records: (0..1000).map(|i| put(&format!("m{i}"), "ledger", b"x")).collect() };
    admin.crypto.put_records(many).await.expect("put 1000");
    let puts = admin.audit_entries("record.put").await;
    assert_eq!(puts.len(), 4, "one entry for the batch");
    assert!(puts[3].details.starts_with("1000 records under "), "{:?}", puts[3]);
    assert_eq!(puts[3].subject, "hr/pay/m0 and 999 more");

    // Whoever may read deletes, audited with the key.
    let gone = pb::DeleteRecordRequest { address: addr("1") };
    admin.crypto.delete_record(gone).await.expect("admin deletes");
    let deletes = admin.audit_entries("record.delete").await;
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].subject, "hr/pay/1");
    assert!(deletes[0].details.contains(&key), "{:?}", deletes[0]);
    let verify = admin.audit.verify_audit_chain(pb::VerifyAuditChainRequest {}).await.expect("verify").into_inner();
    assert!(verify.intact, "{verify:?}");
}

/// The store's checked record writes, on both engines: a write whose
/// expectation no longer holds is `Stale` and writes nothing (neither the
/// records nor the audit entry); one that holds commits both together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_record_writes_are_conditional_on_the_key_they_were_checked_for() {
    use std::sync::Arc;

    use kmf::domain::audit::{AuditEvent, Outcome};
    use kmf::domain::ids::{KeyId, UnixMillis};
    use kmf::domain::record::{RecordAddress, StoredRecord};
    use kmf::store::{AuditStore, RecordStore, StoreError};
    for s in crate::store_contract::subjects() {
        let (st, audit) = (RecordStore::new(&s.store), AuditStore::new(&s.store));
        let key = |spec: &str| KeyId::parse(&format!("0123456789abcdef0123456789abcdef:{spec}:v1")).expect("key id");
        let a = RecordAddress::parse("t", "f", "1").expect("address");
        let rec = |k: &KeyId| StoredRecord {
            address: a.clone(),
            ciphertext: vec![7; 8],
            key_id: k.clone(),
            updated_at: UnixMillis(1),
        };
        let ev = |action: &str| vec![AuditEvent::new(UnixMillis(1), "operator:t", action, "t/f/1", Outcome::Success)];
        let audit_len = || async { audit.audit_rows(0, usize::MAX).await.expect("audit").len() };
        assert_eq!(st.record_keys(vec![a.clone()]).await.expect("keys"), vec![None]);
        let stale =
            st.put_records_checked(Arc::new(vec![rec(&key("x"))]), vec![Some(key("x"))], ev("record.put")).await;
        assert!(matches!(stale, Err(StoreError::Stale { .. })), "{}: {stale:?}", s.name);
        assert_eq!(
            (st.record(a.clone()).await.expect("read"), audit_len().await),
            (None, 0),
            "{}: nothing written",
            s.name
        );
        // One address twice in a call: both are checked against what was there before.
        let both = Arc::new(vec![rec(&key("x")), rec(&key("y"))]);
        st.put_records_checked(both, vec![None, None], ev("record.put")).await.expect("put");
        assert_eq!(st.record_keys(vec![a.clone()]).await.expect("keys"), vec![Some(key("y"))], "{}", s.name);
        assert_eq!(audit_len().await, 1, "{}", s.name);
        let stale =
            st.put_records_checked(Arc::new(vec![rec(&key("z"))]), vec![Some(key("x"))], ev("record.put")).await;
        assert!(matches!(stale, Err(StoreError::Stale { .. })), "{}: replaced a record it did not check", s.name);
        let stale = st.delete_record_checked(a.clone(), key("x"), ev("record.delete")).await;
        assert!(matches!(stale, Err(StoreError::Stale { .. })), "{}: deleted a record it did not check", s.name);
        let read = st.record(a.clone()).await.expect("read").map(|r| r.key_id);
        assert_eq!((read, audit_len().await), (Some(key("y")), 1), "{}", s.name);
        st.delete_record_checked(a.clone(), key("y"), ev("record.delete")).await.expect("delete");
        assert_eq!((st.record(a.clone()).await.expect("read"), audit_len().await), (None, 2), "{}", s.name);
        let gone = st.delete_record_checked(a.clone(), key("y"), ev("record.delete")).await;
        assert!(matches!(gone, Err(StoreError::Stale { .. })), "{}: {gone:?}", s.name);
    }
}
