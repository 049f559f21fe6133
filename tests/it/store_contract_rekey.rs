//! The store contract for rekey, on both engines: the record debt index
//! follows every records write; an import that asks for a rekey schedules
//! its run and job in the same transaction; a rekey batch is conditional on
//! the job's lease and on each record still being what was read; the run
//! ends with its property in one transaction, and only when nothing is owed.
#![allow(clippy::unwrap_used, reason = "test fixtures: a failed setup should panic where it happened")]

use std::sync::Arc;

use kmf::domain::exchange::{ExchangeRole, RequestEvent, SignedBlob};
use kmf::domain::ids::{KeyId, UnixMillis};
use kmf::domain::job::Lease;
use kmf::domain::property::REKEYED;
use kmf::domain::record::{RecordAddress, StoredRecord};
use kmf::domain::rekey::{KeyDebt, RekeyState};
use kmf::store::{
    JobStore, PropertyStore, RecordStore, RekeyEnd, RekeyStore, RequestEffects, RequestStore, RowKind, Store,
    StoreError, rekey_job_id,
};

use crate::store_contract::{event, key, name, request, subjects, sys};

fn record(id: &str, key_id: &KeyId, ciphertext: u8) -> StoredRecord {
    StoredRecord {
        address: RecordAddress::parse("t", "f", id).unwrap(),
        ciphertext: vec![ciphertext; 40],
        key_id: key_id.clone(),
        updated_at: UnixMillis(1),
    }
}

async fn debt(st: &Arc<Store>) -> Vec<(String, u64)> {
    let debts = RecordStore::new(st).record_debt().await.unwrap();
    debts.into_iter().map(|d| (d.key_id.to_string(), d.records)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_debt_follows_every_records_write() {
    for s in subjects() {
        let (st, records) = (&s.store, RecordStore::new(&s.store));
        let (imported, own) = (key("s", 3, 1).0.id, key("s", 1, 1).0.id);
        let recs: Vec<_> = (0..5).map(|i| record(&format!("r{i}"), &imported, 1)).collect();
        records.put_records(recs).await.unwrap();
        assert_eq!(debt(st).await, [(imported.to_string(), 5)], "{}", s.name);
        records.put_record(record("r0", &own, 2)).await.unwrap();
        let moved = [(own.to_string(), 1), (imported.to_string(), 4)];
        assert_eq!(debt(st).await, moved, "{}: an overwrite moves it", s.name);
        records.put_record(record("r1", &imported, 3)).await.unwrap();
        assert_eq!(debt(st).await, moved, "{}: same key, same debt", s.name);
        assert!(records.delete_record(RecordAddress::parse("t", "f", "r2").unwrap()).await.unwrap());
        assert!(!records.delete_record(RecordAddress::parse("t", "f", "r2").unwrap()).await.unwrap());
        assert_eq!(debt(st).await, [(own.to_string(), 1), (imported.to_string(), 3)], "{}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_batch_is_conditional_and_the_run_ends_only_when_nothing_is_owed() {
    for s in subjects() {
        let (st, records, rekeys) = (&s.store, RecordStore::new(&s.store), RekeyStore::new(&s.store));
        // A completed import of two keys of sys(3) that asks for a rekey.
        let mut req = request(1, 10);
        (req.role, req.source.sys_id, req.target.sys_id, req.rekey) = (ExchangeRole::Target, sys(3), sys(1), true);
        RequestStore::new(st)
            .insert_request(req.clone(), Some(b"transport".to_vec()), RequestEffects::default(), Vec::new())
            .await
            .unwrap();
        let v = RequestStore::new(st).request(req.id.clone()).await.unwrap().unwrap();
        let mut done = v.value.clone();
        done.apply(RequestEvent::Approve, "source", UnixMillis(11)).unwrap();
        done.apply(RequestEvent::Complete, "system", UnixMillis(11)).unwrap();
        let receipt = SignedBlob { bytes: b"receipt".to_vec(), signature: b"sig".to_vec() };
        let keys = vec![key("s", 3, 1), key("s", 3, 2)];
        RequestStore::new(st)
            .complete_import(
                v.version,
                done.clone(),
                keys.clone(),
                ([5u8; 32], receipt.clone()),
                vec![event("exchange.import")],
            )
            .await
            .unwrap();
        let run = rekeys.rekey(req.id.clone()).await.unwrap().expect("scheduled with the import");
        assert_eq!((run.state, run.specs.clone()), (RekeyState::Pending, vec![name("s")]), "{}", s.name);
        assert!(JobStore::new(st).job(rekey_job_id(&req.id)).await.unwrap().is_some(), "{}: its job too", s.name);

        let (imported, other, own) = (keys[0].0.id.clone(), key("x", 3, 1).0.id, key("s", 1, 1).0.id);
        let mut recs: Vec<_> = (0..3).map(|i| record(&format!("r{i}"), &imported, 1)).collect();
        recs.push(record("r3", &other, 1));
        records.put_records(recs).await.unwrap();
        let (_, lease) =
            JobStore::new(st).claim_due_jobs("runner".into(), UnixMillis(20), 60_000, 10).await.unwrap().remove(0);
        let until = UnixMillis(60_000);
        let run = rekeys.begin_rekey_attempt(req.id.clone(), lease.clone(), until, UnixMillis(21)).await.unwrap();
        assert_eq!((run.state, run.attempts, run.records_total), (RekeyState::Running, 1, 3), "{}", s.name);
        let page = rekeys.rekey_page(run, None, 10, 100).await.unwrap();
        assert!(page.at_end, "{}", s.name);
        let ids: Vec<_> = page.records.iter().map(|r| r.address.record_id.as_str()).collect();
        assert_eq!(ids, ["r0", "r1", "r2"], "{}: only records under the run's keys", s.name);

        // r1 is written meanwhile (under a current key): the batch leaves it alone.
        records.put_record(record("r1", &own, 9)).await.unwrap();
        let batch: Vec<_> = page.records.iter().map(|r| (r.clone(), record(&r.address.record_id, &own, 7))).collect();
        let stranger = Lease { owner: "other".into(), claim: 99, expires_at: until };
        let refused =
            rekeys.write_rekey_batch(req.id.clone(), stranger, until, batch.clone(), None, true, UnixMillis(22)).await;
        assert!(matches!(refused, Err(StoreError::Stale { .. })), "{}: another lease writes nothing", s.name);
        assert_eq!(debt(st).await[1], (imported.to_string(), 2), "{}", s.name);
        let cursor = page.last_scanned.clone();
        let written = rekeys.write_rekey_batch(
            req.id.clone(),
            lease.clone(),
            until,
            batch,
            cursor.clone(),
            false,
            UnixMillis(22),
        );
        let (after, moved) = written.await.unwrap();
        assert_eq!((moved, after.records_done, after.cursor.clone()), (2, 2, cursor), "{}", s.name);
        let r1 = records.record(RecordAddress::parse("t", "f", "r1").unwrap()).await.unwrap().unwrap();
        assert_eq!(r1.ciphertext, vec![9; 40], "{}: the newer write stays", s.name);
        let owed = rekeys.rekey_debt(after).await.unwrap();
        assert!(owed.iter().all(|d| d.records == 0) && owed.len() == 2, "{}: {owed:?}", s.name);
        assert_eq!(debt(st).await, [(own.to_string(), 3), (other.to_string(), 1)], "{}", s.name);

        // Not done while a record is owed; done (with the property) once none is.
        records.put_record(record("late", &keys[1].0.id, 1)).await.unwrap();
        let run = rekeys.rekey(req.id.clone()).await.unwrap().unwrap();
        let early = rekeys
            .end_rekey(run, lease.clone(), RekeyEnd::Completed, UnixMillis(23), |_| event("rekey.completed"))
            .await;
        assert!(matches!(early, Err(StoreError::Stale { kind: RowKind::Rekey, .. })), "{}: {early:?}", s.name);
        assert_eq!(PropertyStore::new(st).property(REKEYED.into()).await.unwrap(), None, "{}: nothing written", s.name);
        assert!(records.delete_record(RecordAddress::parse("t", "f", "late").unwrap()).await.unwrap());
        let run = rekeys.rekey(req.id.clone()).await.unwrap().unwrap();
        let end = rekeys.end_rekey(run, lease, RekeyEnd::Completed, UnixMillis(24), |_| event("rekey.completed")).await;
        assert_eq!(end.unwrap().state, RekeyState::Completed, "{}", s.name);
        assert_eq!(
            PropertyStore::new(st).property(REKEYED.into()).await.unwrap().map(|p| p.value),
            Some("true".into()),
            "{}",
            s.name
        );
        assert!(JobStore::new(st).job(rekey_job_id(&req.id)).await.unwrap().is_none(), "{}: the job is done", s.name);
        assert_eq!(
            rekeys.rekey_debt(rekeys.rekey(req.id.clone()).await.unwrap().unwrap()).await.unwrap(),
            [
                KeyDebt { key_id: keys[0].0.id.clone(), records: 0 },
                KeyDebt { key_id: keys[1].0.id.clone(), records: 0 }
            ],
            "{}",
            s.name
        );
    }
}
