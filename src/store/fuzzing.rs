//! Every decoder of stored bytes, for the `stored_row` fuzz target (see
//! `crate::fuzzing`): the same bytes go to each row type the store reads.
//! A row that decodes and converts to its domain value is encoded again from
//! that value, and must decode to the same value. Nothing here is used by
//! the daemon.
// allowed: a fuzz target reports a broken round trip by panicking (libFuzzer
// records the input); nothing here runs in the daemon.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Result;
use super::clone::{CloneGrantRow, CloneTargetRow, grant_from, target_from};
use super::clone_exchanges::{CloneExchangeRow, exchange_from};
use super::clone_runs::CloneRunRow;
use super::clone_schedules::{CloneScheduleRow, schedule_from};
use super::diagnostics::{KeyStateOnly, RequestStatusOnly};
use super::jobs::JobRow;
use super::migrate_v1::OutboxRow;
use super::policies::PolicyRow;
use super::properties::{PropertyRow, property_from};
use super::records::{ImportKeyRow, KeyRow, LifecyclePolicyRow, ModuleRow, RequestRow, SpecRow, decode, encode};
use super::rekeys::RekeyRow;
use super::requests::{decode_blob, encode_blob};
use super::stored_records::{address_from_key, address_key, decode_row, encode_row};
use crate::domain::audit::AuditEntry;
use crate::domain::bundle::{Bundle, Receipt};
use crate::domain::exchange::{ExchangeRequest, SignedBlob};
use crate::domain::ids::{CloneId, Name, RequestId, SysId};
use crate::domain::job::Job;
use crate::domain::key::{KeyRecord, LifecyclePolicy, WrappedKey};
use crate::domain::policy::AccessPolicy;
use crate::domain::record::RecordAddress;
use crate::domain::spec::{Module, Spec};

/// A JSON row: decode, convert, and if that worked, check the round trip.
fn json_row<R, D>(bytes: &[u8], from_row: impl Fn(R) -> Result<D>)
where
    R: Serialize + DeserializeOwned + for<'a> From<&'a D>,
    D: PartialEq + Debug,
{
    let Ok(value) = decode::<R>(bytes).and_then(&from_row) else { return };
    let again = from_row(decode(&encode(&R::from(&value))).expect("a re-encoded row decodes"));
    assert_eq!(again.expect("a re-encoded row converts"), value, "row round trip");
}

/// A key row (the key and its wrapped material).
fn key_row(bytes: &[u8]) {
    let Ok((key, wrapped)) = decode::<KeyRow>(bytes).and_then(<(KeyRecord, WrappedKey)>::try_from) else { return };
    let again = decode::<KeyRow>(&encode(&KeyRow::new(&key, &wrapped))).expect("a re-encoded row decodes");
    let (key2, wrapped2) = <(KeyRecord, WrappedKey)>::try_from(again).expect("a re-encoded row converts");
    assert_eq!(key2, key, "key row round trip");
    assert!(wrapped2 == wrapped, "key row round trip: wrapped material");
}

/// Feeds `bytes` to every stored-row decoder (keys of rows that carry part
/// of their value in their key are fixed).
pub fn stored_row(bytes: &[u8]) {
    let sys_id = SysId::from_random([1; 16]);
    let request_id = RequestId::from_random([2; 16]);
    let clone_id = CloneId::from_random([3; 16]);
    let name = Name::parse("fuzz", "name").expect("a valid name");

    json_row::<ModuleRow, _>(bytes, Module::try_from);
    json_row::<SpecRow, _>(bytes, Spec::try_from);
    key_row(bytes);
    json_row::<LifecyclePolicyRow, _>(bytes, LifecyclePolicy::try_from);
    json_row::<RequestRow, _>(bytes, ExchangeRequest::try_from);
    json_row::<JobRow, _>(bytes, Job::try_from);
    json_row::<PolicyRow, _>(bytes, AccessPolicy::try_from);
    json_row::<PropertyRow, _>(bytes, |r| Ok(property_from("fuzz".into(), r)));
    json_row::<CloneTargetRow, _>(bytes, |r| target_from(sys_id.clone(), r));
    json_row::<CloneGrantRow, _>(bytes, |r| grant_from(sys_id.clone(), r));
    json_row::<CloneExchangeRow, _>(bytes, |r| exchange_from(sys_id.clone(), r));
    json_row::<CloneRunRow, _>(bytes, |r| super::clone_runs::run_from(clone_id.clone(), r));
    json_row::<CloneScheduleRow, _>(bytes, |r| schedule_from(name.clone(), r));
    json_row::<RekeyRow, _>(bytes, |r| super::rekeys::run_from(request_id.clone(), r));
    json_row::<ImportKeyRow, _>(bytes, crate::domain::byok::ImportKey::try_from);
    // Rows only read: partial views for counting, and the schema-1 outbox.
    let _ = decode::<KeyStateOnly>(bytes);
    let _ = decode::<RequestStatusOnly>(bytes);
    let _ = decode::<OutboxRow>(bytes);

    record_row(bytes);
    record_key(bytes);
    audit_row(bytes);
    blob_row(bytes);
}

/// A record row, binary or the older JSON.
fn record_row(bytes: &[u8]) {
    let address = RecordAddress::parse("t", "f", "r").expect("a valid address");
    if let Ok(rec) = decode_row(address.clone(), bytes) {
        assert_eq!(decode_row(address, &encode_row(&rec)).expect("a re-encoded record decodes"), rec);
    }
}

/// A record's key: (table, field, record id) in the tuple encoding.
fn record_key(bytes: &[u8]) {
    if let Ok(address) = address_from_key(bytes) {
        let again = address_from_key(&address_key(&address)).expect("a re-encoded record key decodes");
        assert_eq!(again, address, "record key round trip");
    }
}

/// An audit entry as stored (canonical body and its hash).
fn audit_row(bytes: &[u8]) {
    if let Ok(e) = AuditEntry::decode(bytes) {
        assert_eq!(AuditEntry::decode(&e.encode()).as_ref(), Ok(&e), "audit entry round trip");
    }
}

/// A signed blob as the bundles and receipts tables hold it; its bytes are
/// a bundle or a receipt.
fn blob_row(bytes: &[u8]) {
    let Ok(blob) = decode_blob(bytes) else { return };
    let again: SignedBlob = decode_blob(&encode_blob(&blob)).expect("a re-encoded blob decodes");
    assert_eq!(again, blob, "signed blob round trip");
    if let Ok(b) = Bundle::decode(&blob.bytes) {
        assert_eq!(Bundle::decode(&b.encode()).as_ref(), Ok(&b), "bundle round trip");
    }
    if let Ok(r) = Receipt::decode(&blob.bytes) {
        assert_eq!(Receipt::decode(&r.encode()).as_ref(), Ok(&r), "receipt round trip");
    }
}
