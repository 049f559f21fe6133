//! The audit log in memory: entries filtered and paged, the hash chain
//! verified, and refused calls coalesced.

use super::AuditFilter;
use crate::domain::audit::AuditEntry;
use crate::node::testing::{Instance, admin, name, test_ca};

fn all() -> AuditFilter {
    AuditFilter { limit: 10_000, ..Default::default() }
}

async fn entries(instance: &Instance, filter: AuditFilter) -> (Vec<AuditEntry>, u64) {
    instance.services.audit.audit_entries(filter).await.expect("audit entries")
}

/// An instance with two specs and a rotation behind it.
async fn busy() -> Instance {
    let solo = Instance::new(&test_ca(), "solo");
    solo.spec_with_keys("payroll", "salary", 1).await;
    solo.spec_with_keys("payroll", "bonus", 1).await;
    solo.services.catalog.rotate_key(&admin(), name("salary")).await.expect("rotate");
    solo
}

#[tokio::test]
async fn entries_are_filtered_by_action_prefix_actor_and_subject() {
    let solo = busy().await;
    let (everything, next) = entries(&solo, all()).await;
    assert_eq!(next, 0, "all read");
    let seqs: Vec<u64> = everything.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in sequence order: {seqs:?}");

    let keys = entries(&solo, AuditFilter { action_prefix: "key.".into(), ..all() }).await.0;
    assert_eq!(keys.len(), 3, "two generated, one rotation: {keys:?}");
    assert!(keys.iter().all(|e| e.event.action.starts_with("key.")));
    let specs = entries(&solo, AuditFilter { action_prefix: "spec.create".into(), ..all() }).await.0;
    assert_eq!(specs.len(), 2);
    let bonus = entries(&solo, AuditFilter { subject: "bonus".into(), ..all() }).await.0;
    assert_eq!(bonus.len(), 1, "{bonus:?}");
    let by_root = entries(&solo, AuditFilter { actor: "operator:root".into(), ..all() }).await.0;
    let expected = everything.iter().filter(|e| e.event.actor == "operator:root").count();
    assert_eq!(by_root.len(), expected);
    assert!(by_root.len() >= 9, "module, its 3 policies, 2 specs, 2 keys, a rotation: {by_root:?}");
    let nobody = entries(&solo, AuditFilter { actor: "operator:nobody".into(), ..all() }).await.0;
    assert!(nobody.is_empty());
}

#[tokio::test]
async fn entries_are_read_a_page_at_a_time() {
    let solo = busy().await;
    let total = entries(&solo, all()).await.0.len();
    let (first, next) = entries(&solo, AuditFilter { limit: 2, ..all() }).await;
    assert_eq!(first.len(), 2);
    assert_eq!(next, first[1].seq, "continue after the last entry returned");
    let (rest, end) = entries(&solo, AuditFilter { after_seq: next, ..all() }).await;
    assert_eq!((rest.len(), end), (total - 2, 0));
    assert!(rest[0].seq > first[1].seq);
}

#[tokio::test]
async fn verify_audit_counts_every_entry_of_the_chain() {
    let solo = busy().await;
    let total = entries(&solo, all()).await.0.len() as u64;
    assert!(total >= 6);
    assert_eq!(solo.services.audit.verify_audit().await.expect("verify"), Ok(total));
    solo.services.catalog.generate_key(&admin(), name("bonus")).await.expect("key");
    assert_eq!(solo.services.audit.verify_audit().await.expect("verify"), Ok(total + 1), "one more link");
    let (chain, _) = entries(&solo, all()).await;
    assert!(chain.windows(2).all(|w| w[1].prev_hash == w[0].hash), "each entry names the one before");
}

#[tokio::test]
async fn a_refused_call_is_audited_once_and_its_repeats_counted_in_one_entry() {
    let solo = Instance::new(&test_ca(), "solo");
    let audit = &solo.services.audit;
    for _ in 0..3 {
        audit.audit_refusal("operator:eve".into(), "/kmf.Keys/Rotate".into(), "needs admin".into()).await;
    }
    let refused = entries(&solo, AuditFilter { action_prefix: "call.refused".into(), ..all() }).await.0;
    assert_eq!(refused.len(), 1, "the repeats are only counted while the window is open");
    assert_eq!((refused[0].event.actor.as_str(), refused[0].event.action.as_str()), ("operator:eve", "call.refused"));

    // The window closes; the next refusal writes the count of the last one.
    solo.clock.advance_millis(crate::domain::refusals::WINDOW_MILLIS + 1);
    audit.audit_refusal("operator:eve".into(), "/kmf.Keys/Rotate".into(), "needs admin".into()).await;
    let after = entries(&solo, AuditFilter { action_prefix: "call.refused".into(), ..all() }).await.0;
    let actions: Vec<&str> = after.iter().map(|e| e.event.action.as_str()).collect();
    assert_eq!(actions, ["call.refused", "call.refused.repeated", "call.refused"], "{after:?}");
    assert!(after[1].event.details.starts_with("2 more refusals"), "{}", after[1].event.details);
}
