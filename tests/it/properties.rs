//! System properties through gRPC: types, defaults, absence, audit, roles.

use kmf::domain::auth::Role;
use kmf::rpc::pb;
use tonic::Code;

use crate::support::{Ops, Pki, TestNode};

const AUTO: &str = "glide_encryption.auto_key_exchange.enabled";
const REKEYED: &str = "protected.script.values.kmf.rekeyed";

async fn get(ops: &mut Ops, name: &str) -> Result<pb::Property, tonic::Status> {
    ops.properties
        .get_property(pb::GetPropertyRequest { name: name.into() })
        .await
        .map(|r| r.into_inner().property.expect("p"))
}

async fn set(ops: &mut Ops, name: &str, value: &str) -> Result<pb::Property, tonic::Status> {
    let req = pb::SetPropertyRequest { name: name.into(), value: value.into() };
    ops.properties.set_property(req).await.map(|r| r.into_inner().property.expect("p"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_properties_with_defaults_and_audit() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;

    let auto = get(&mut ops, AUTO).await.expect("default");
    assert_eq!((auto.value.as_str(), auto.r#type.as_str(), auto.is_default), ("true", "bool", true));
    assert_eq!(get(&mut ops, REKEYED).await.expect_err("absent until written").code(), Code::NotFound);
    assert_eq!(get(&mut ops, "Bad Name").await.expect_err("bad name").code(), Code::InvalidArgument);

    let before = ops.properties.list_properties(pb::ListPropertiesRequest {}).await.expect("list").into_inner();
    for (name, value) in [(AUTO, "maybe"), (REKEYED, "1"), ("x", &"v".repeat(4097)), ("Bad", "v")] {
        let err = set(&mut ops, name, value).await.expect_err("invalid set accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
    }
    let mut auditor = Ops::new(node.channel(&pki.operator("aud", &[Role::CryptographicAuditor])).await);
    assert_eq!(set(&mut auditor, AUTO, "false").await.expect_err("auditor").code(), Code::PermissionDenied);
    let after = ops.properties.list_properties(pb::ListPropertiesRequest {}).await.expect("list").into_inner();
    assert_eq!(before, after, "refused sets changed nothing");

    let p = set(&mut ops, AUTO, "FALSE").await.expect("set");
    assert_eq!((p.value.as_str(), p.is_default, p.updated_by.as_str()), ("false", false, "operator:admin"));
    // Written by the system only (the rekey after an import): refused, audited, nothing stored.
    let refused = set(&mut ops, REKEYED, "true").await.expect_err("an operator may not set rekeyed");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    set(&mut ops, "glide.kmf.custom", "any text").await.expect("string property");
    assert_eq!(get(&mut auditor, REKEYED).await.expect_err("still absent").code(), Code::NotFound);
    let all = ops.properties.list_properties(pb::ListPropertiesRequest {}).await.expect("list").into_inner().properties;
    let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["glide.kmf.custom", AUTO], "sorted by name");

    let req = pb::ListAuditEntriesRequest { action_prefix: "property.".into(), limit: 100, ..Default::default() };
    let entries = ops.audit.list_audit_entries(req).await.expect("audit").into_inner().entries;
    assert_eq!(entries.len(), 3);
    assert_eq!((entries[0].subject.as_str(), entries[0].details.as_str()), (AUTO, "(unset) -> false"));
    assert_eq!((entries[1].subject.as_str(), entries[1].outcome.as_str()), (REKEYED, "refused"));
}
