//! The audit log: what is recorded, and a tampered entry caught by
//! `kmfctl audit verify`.

use std::process::Command;

use kmf::domain::auth::Role;
use kmf::rpc::pb::{self, Decision};
use redb::{ReadableTable, TableDefinition};

use crate::support::{Ops, Pki, TestNode};

/// The store engine's audit table (byte keys: the sequence, big-endian).
const AUDIT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv/audit");

async fn entries(ops: &mut Ops) -> Vec<pb::AuditEntry> {
    let req = pb::ListAuditEntriesRequest { limit: 10_000, ..Default::default() };
    ops.audit.list_audit_entries(req).await.expect("list").into_inner().entries
}

fn kmfctl_verify(node: &TestNode, pki: &Pki, dir: &std::path::Path) -> std::process::Output {
    let files = pki.operator("reader", &[Role::CryptographicAuditor]);
    std::fs::write(dir.join("ca.pem"), &files.ca_pem).expect("ca");
    std::fs::write(dir.join("op.pem"), &files.cert_pem).expect("cert");
    std::fs::write(dir.join("op.key"), &files.key_pem[..]).expect("key");
    Command::new(env!("CARGO_BIN_EXE_kmfctl"))
        .args(["--endpoint", &node.host.to_string()])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("op.pem"))
        .arg("--key")
        .arg(dir.join("op.key"))
        .args(["audit", "verify"])
        .output()
        .expect("kmfctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_chained_and_an_edited_entry_is_caught() {
    let pki = Pki::new();
    let (source, mut target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    let created = t.create_request(&source, &["salary"]).await.expect("create");
    s.decide(&created.request_id, Decision::Approve, "").await.expect("approve");
    // A refused call is audited with the caller's identity.
    let mut auditor = Ops::new(target.channel(&pki.operator("audrey", &[Role::CryptographicAuditor])).await);
    let err =
        auditor.keys.generate_key(pb::GenerateKeyRequest { spec: "salary".into() }).await.expect_err("auditor writes");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("operator audrey needs one of the roles"), "{err}");

    let on_target = entries(&mut t).await;
    let actions: Vec<&str> = on_target.iter().map(|e| e.action.as_str()).collect();
    for want in ["module.create", "spec.create", "exchange.create", "exchange.import", "call.refused"] {
        assert!(actions.contains(&want), "target audit lacks {want}: {actions:?}");
    }
    let import = on_target.iter().find(|e| e.action == "exchange.import").expect("import entry");
    assert!(
        import.details.contains(&format!("{}:salary:v1", source.sys_id)),
        "imports name key ids: {}",
        import.details
    );
    let refused = on_target.iter().find(|e| e.action == "call.refused").expect("refusal");
    assert_eq!((refused.actor.as_str(), refused.outcome.as_str()), ("operator:audrey", "refused"));
    assert!(refused.subject.contains("GenerateKey"), "{}", refused.subject);
    let on_source: Vec<String> = entries(&mut s).await.into_iter().map(|e| e.action).collect();
    for want in ["key.generate", "exchange.open", "exchange.approve", "exchange.export", "exchange.complete"] {
        assert!(on_source.iter().any(|a| a == want), "source audit lacks {want}: {on_source:?}");
    }
    for pair in on_target.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "each entry names its predecessor's hash");
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let ok = kmfctl_verify(&target, &pki, tmp.path());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("intact"), "{}", String::from_utf8_lossy(&ok.stdout));

    // Edit one entry in the database (same length, one letter of its subject).
    let victim = on_target.iter().find(|e| e.action == "spec.create").expect("spec.create entry").seq;
    assert!(victim > 1 && victim < on_target.len() as u64, "an entry in the middle of the chain");
    drop((t, auditor));
    target.stop().await;
    {
        let db = redb::Database::open(target.dir.path().join("kmf.redb")).expect("open db");
        let tx = db.begin_write().expect("tx");
        {
            let mut table = tx.open_table(AUDIT).expect("audit table");
            let k = kmf::store::tuple::KeyBuf::new().u64(victim).done();
            let mut bytes = table.get(k.as_slice()).expect("get").expect("the entry").value().to_vec();
            let at = bytes.windows(6).position(|w| w == b"salary").expect("the entry names the spec");
            bytes[at] = b'S';
            table.insert(k.as_slice(), bytes.as_slice()).expect("write");
        }
        tx.commit().expect("commit");
    }
    target.restart().await;
    let broken = kmfctl_verify(&target, &pki, tmp.path());
    assert!(!broken.status.success(), "verify missed the edit");
    let out = String::from_utf8_lossy(&broken.stdout);
    assert!(out.contains(&format!("BROKEN at entry {victim}")), "{out}");
    let mut t = target.admin(&pki).await;
    let v = t.audit.verify_audit_chain(pb::VerifyAuditChainRequest {}).await.expect("verify").into_inner();
    assert_eq!((v.intact, v.broken_at_seq, v.entries_verified), (false, victim, victim - 1));
}
